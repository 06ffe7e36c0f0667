//! Opaque pagination markers: one token format for every paginated listing (ListKeys,
//! ListAliases, ListResourceTags, ListKeyRotations, ListGrants, ListRetirableGrants).
//!
//! A marker is the URL-safe base64 (no padding) of
//!
//! ```text
//! format version (1 byte, = 1) | listing (1 byte) | position (listing-specific) | check (4 bytes)
//! ```
//!
//! where `check` is the first four bytes of SHA-256 over a label, the version, the listing
//! and the position. [`Marker::decode`] refuses — with [`InvalidMarker`], answered as
//! `InvalidMarkerException` — anything else: text that is not canonical unpadded base64url,
//! another format version, a marker of another listing, a check that does not match
//! (tampered, truncated or made-up tokens), or a position that does not parse.
//!
//! The check is not a keyed MAC: someone who knows this format can still write a valid
//! marker by hand. That gains nothing: a position only chooses where a listing of things
//! the caller may read anyway resumes.
//!
//! Positions, by listing:
//! - [`Keys`]: the last listed key's `(created_at, key_id)` — created_at as big-endian i128
//!   Unix nanoseconds, then the key id as UTF-8;
//! - [`Aliases`]: the last listed alias name, UTF-8;
//! - [`ResourceTags`]: the last listed tag key, UTF-8;
//! - [`KeyRotations`]: the first backing version of the next page, big-endian u32;
//! - [`Grants`] and [`RetirableGrants`]: the last listed grant's `(created_at, grant_id)`,
//!   encoded as for [`Keys`].
//! - [`IamUsers`]: the last listed IAM user name, lower-cased, UTF-8.
//! - [`TrailEvents`]: the sequence number of the last returned trail record, big-endian
//!   u64, then 8 bytes of SHA-256 over the query's parameters (a token is only valid with
//!   the parameters it was issued for).

use crate::store::KeyPosition;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The marker format this code writes (and the only one it reads).
const FORMAT_VERSION: u8 = 1;
/// Domain separation for the check.
const CHECK_LABEL: &[u8] = b"hsm-kms pagination marker";
const CHECK_LEN: usize = 4;

/// A marker that this service did not issue for this listing, or that was altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Invalid marker")]
pub struct InvalidMarker;

/// One paginated listing: the byte that names it in a marker, and its position type.
pub trait Listing: Copy {
    /// Names the listing inside a marker; distinct for every listing.
    const TAG: u8;
    /// Where a page of this listing starts.
    type Position;
    /// Appends the position's bytes.
    fn write(position: &Self::Position, out: &mut Vec<u8>);
    /// Parses exactly the bytes `write` wrote; `None` for anything else.
    fn read(bytes: &[u8]) -> Option<Self::Position>;
}

/// ListKeys: after the key at a `(created_at, key_id)` position.
#[derive(Debug, Clone, Copy)]
pub struct Keys;

/// ListAliases: after an alias name.
#[derive(Debug, Clone, Copy)]
pub struct Aliases;

/// ListResourceTags: after a tag key.
#[derive(Debug, Clone, Copy)]
pub struct ResourceTags;

/// ListKeyRotations: from a backing version on.
#[derive(Debug, Clone, Copy)]
pub struct KeyRotations;

/// ListGrants: after the grant at a `(created_at, grant_id)` position.
#[derive(Debug, Clone, Copy)]
pub struct Grants;

/// ListRetirableGrants: after the grant at a `(created_at, grant_id)` position.
#[derive(Debug, Clone, Copy)]
pub struct RetirableGrants;

/// CloudTrail LookupEvents (`NextToken`): before a trail record's sequence number, for
/// one query (the fingerprint of its parameters).
#[derive(Debug, Clone, Copy)]
pub struct TrailEvents;

impl Listing for TrailEvents {
    const TAG: u8 = b'E';
    type Position = (u64, [u8; 8]);

    fn write((seq, query): &(u64, [u8; 8]), out: &mut Vec<u8>) {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(query);
    }

    fn read(bytes: &[u8]) -> Option<(u64, [u8; 8])> {
        let (seq, query) = bytes.split_first_chunk::<8>()?;
        Some((u64::from_be_bytes(*seq), <[u8; 8]>::try_from(query).ok()?))
    }
}

impl Listing for Grants {
    const TAG: u8 = b'G';
    type Position = KeyPosition;

    fn write(p: &KeyPosition, out: &mut Vec<u8>) {
        Keys::write(p, out)
    }

    fn read(bytes: &[u8]) -> Option<KeyPosition> {
        Keys::read(bytes)
    }
}

impl Listing for RetirableGrants {
    const TAG: u8 = b'g';
    type Position = KeyPosition;

    fn write(p: &KeyPosition, out: &mut Vec<u8>) {
        Keys::write(p, out)
    }

    fn read(bytes: &[u8]) -> Option<KeyPosition> {
        Keys::read(bytes)
    }
}

/// IAM ListUsers: after a user name (lower-cased, the listing's order).
#[derive(Debug, Clone, Copy)]
pub struct IamUsers;

impl Listing for IamUsers {
    const TAG: u8 = b'U';
    type Position = String;

    fn write(name: &String, out: &mut Vec<u8>) {
        out.extend_from_slice(name.as_bytes());
    }

    fn read(bytes: &[u8]) -> Option<String> {
        read_text(bytes)
    }
}

impl Listing for Keys {
    const TAG: u8 = b'K';
    type Position = KeyPosition;

    fn write(p: &KeyPosition, out: &mut Vec<u8>) {
        out.extend_from_slice(&p.created_at.unix_timestamp_nanos().to_be_bytes());
        out.extend_from_slice(p.key_id.as_bytes());
    }

    fn read(bytes: &[u8]) -> Option<KeyPosition> {
        let (nanos, key_id) = bytes.split_first_chunk::<16>()?;
        let created_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from_be_bytes(*nanos)).ok()?;
        let key_id = std::str::from_utf8(key_id).ok()?.to_owned();
        Some(KeyPosition { created_at, key_id })
    }
}

/// Positions that are one UTF-8 string.
fn read_text(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

impl Listing for Aliases {
    const TAG: u8 = b'A';
    type Position = String;

    fn write(alias_name: &String, out: &mut Vec<u8>) {
        out.extend_from_slice(alias_name.as_bytes());
    }

    fn read(bytes: &[u8]) -> Option<String> {
        read_text(bytes)
    }
}

impl Listing for ResourceTags {
    const TAG: u8 = b'T';
    type Position = String;

    fn write(tag_key: &String, out: &mut Vec<u8>) {
        out.extend_from_slice(tag_key.as_bytes());
    }

    fn read(bytes: &[u8]) -> Option<String> {
        read_text(bytes)
    }
}

impl Listing for KeyRotations {
    const TAG: u8 = b'R';
    type Position = u32;

    fn write(version: &u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&version.to_be_bytes());
    }

    fn read(bytes: &[u8]) -> Option<u32> {
        <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
    }
}

/// An opaque pagination token (`NextMarker` in a response, `Marker` in the next request).
/// Serializes as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Marker(String);

fn check(listing: u8, position: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(CHECK_LABEL)
        .chain_update([FORMAT_VERSION, listing])
        .chain_update(position)
        .finalize();
    let mut out = [0u8; CHECK_LEN];
    for (o, d) in out.iter_mut().zip(digest.iter()) {
        *o = *d;
    }
    out
}

impl Marker {
    /// The marker of `position` in `listing`.
    pub fn encode<L: Listing>(_listing: L, position: &L::Position) -> Marker {
        let mut pos = Vec::new();
        L::write(position, &mut pos);
        let mut bytes = Vec::with_capacity(2 + pos.len() + CHECK_LEN);
        bytes.extend_from_slice(&[FORMAT_VERSION, L::TAG]);
        bytes.extend_from_slice(&pos);
        bytes.extend_from_slice(&check(L::TAG, &pos));
        Marker(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The position in `listing` that `token` encodes, or [`InvalidMarker`] if `token` is not
    /// a marker of `listing` written by [`Marker::encode`]. Never panics.
    pub fn decode<L: Listing>(_listing: L, token: &str) -> Result<L::Position, InvalidMarker> {
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| InvalidMarker)?;
        let (header, rest) = bytes.split_first_chunk::<2>().ok_or(InvalidMarker)?;
        if *header != [FORMAT_VERSION, L::TAG] {
            return Err(InvalidMarker);
        }
        let (position, sum) = rest.split_last_chunk::<CHECK_LEN>().ok_or(InvalidMarker)?;
        if *sum != check(L::TAG, position) {
            return Err(InvalidMarker);
        }
        L::read(position).ok_or(InvalidMarker)
    }

    /// `decode` of an optional token (a request's `Marker`).
    pub fn decode_opt<L: Listing>(
        listing: L,
        token: Option<&str>,
    ) -> Result<Option<L::Position>, InvalidMarker> {
        token.map(|t| Marker::decode(listing, t)).transpose()
    }

    /// The `NextMarker` after a page: the position of its last item when the listing was
    /// `truncated` there, else `None`.
    pub fn after_last<L: Listing, T>(
        listing: L,
        truncated: bool,
        items: &[T],
        position: impl FnOnce(&T) -> L::Position,
    ) -> Option<Marker> {
        match (truncated, items.last()) {
            (true, Some(last)) => Some(Marker::encode(listing, &position(last))),
            _ => None,
        }
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_position(nanos: i128, key_id: &str) -> KeyPosition {
        KeyPosition {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap(),
            key_id: key_id.to_owned(),
        }
    }

    #[test]
    fn round_trips_every_listing() {
        for p in [
            key_position(0, ""),
            key_position(
                1_700_000_000_123_000_000,
                "1234abcd-12ab-34cd-56ef-1234567890ab",
            ),
            key_position(-1, "ü:\u{1F511}"),
        ] {
            let m = Marker::encode(Keys, &p);
            assert_eq!(Marker::decode(Keys, m.as_str()), Ok(p));
        }
        for name in ["", "alias/a", "alias/aws/ebs", "alias/ü-\u{1F511}"] {
            let m = Marker::encode(Aliases, &name.to_owned());
            assert_eq!(Marker::decode(Aliases, m.as_str()).as_deref(), Ok(name));
            let m = Marker::encode(ResourceTags, &name.to_owned());
            assert_eq!(
                Marker::decode(ResourceTags, m.as_str()).as_deref(),
                Ok(name)
            );
        }
        for v in [0, 1, 2, 26, u32::MAX] {
            let m = Marker::encode(KeyRotations, &v);
            assert_eq!(Marker::decode(KeyRotations, m.as_str()), Ok(v));
        }
        assert_eq!(Marker::decode_opt(KeyRotations, None), Ok(None));
    }

    #[test]
    fn markers_are_url_safe_and_fit_the_request_limit() {
        let long = "x".repeat(256);
        for m in [
            Marker::encode(Aliases, &format!("alias/{long}")),
            Marker::encode(Keys, &key_position(i128::from(i64::MAX), &long)),
        ] {
            assert!(m
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert!(m.as_str().len() <= 1024, "{}", m.as_str().len());
            assert_eq!(serde_json::to_value(&m).unwrap(), m.as_str());
        }
    }

    #[test]
    fn a_marker_of_another_listing_is_refused() {
        let tags = Marker::encode(ResourceTags, &"alias/a".to_owned());
        let aliases = Marker::encode(Aliases, &"alias/a".to_owned());
        assert_ne!(tags, aliases);
        assert_eq!(Marker::decode(Aliases, tags.as_str()), Err(InvalidMarker));
        assert_eq!(
            Marker::decode(ResourceTags, aliases.as_str()),
            Err(InvalidMarker)
        );
        let rotations = Marker::encode(KeyRotations, &3);
        assert_eq!(Marker::decode(Keys, rotations.as_str()), Err(InvalidMarker));
        assert_eq!(
            Marker::decode(Aliases, rotations.as_str()),
            Err(InvalidMarker)
        );
        let keys = Marker::encode(Keys, &key_position(5, "k"));
        assert_eq!(
            Marker::decode(KeyRotations, keys.as_str()),
            Err(InvalidMarker)
        );
    }

    #[test]
    fn garbage_and_earlier_formats_are_refused() {
        let legacy = [
            // The markers of earlier versions: a bare rotation version, base64 of
            // "tags:<key>", "a1:<alias>", "k1:<f64 bits>:<key id>".
            "2".to_owned(),
            URL_SAFE_NO_PAD.encode("tags:env"),
            URL_SAFE_NO_PAD.encode("a1:alias/a"),
            URL_SAFE_NO_PAD.encode(format!("k1:{:016x}:k1", 1.0f64.to_bits())),
            // base64 of "not-a-marker", as the API tests send.
            "bm90LWEtbWFya2Vy".to_owned(),
            String::new(),
            "!!!".to_owned(),
            "AQ".to_owned(),
        ];
        for m in &legacy {
            assert_eq!(Marker::decode(KeyRotations, m), Err(InvalidMarker), "{m:?}");
            assert_eq!(Marker::decode(ResourceTags, m), Err(InvalidMarker), "{m:?}");
            assert_eq!(Marker::decode(Aliases, m), Err(InvalidMarker), "{m:?}");
            assert_eq!(Marker::decode(Keys, m), Err(InvalidMarker), "{m:?}");
        }
        // Standard (non URL-safe) or padded base64 of a genuine marker is not the marker.
        let m = Marker::encode(Aliases, &"alias/\u{3fe}\u{3ff}".to_owned());
        let bytes = URL_SAFE_NO_PAD.decode(m.as_str()).unwrap();
        let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_ne!(std, m.as_str());
        assert_eq!(Marker::decode(Aliases, &std), Err(InvalidMarker));
    }

    #[test]
    fn a_well_formed_token_with_a_bad_position_is_refused() {
        // Correct header and check around positions that do not parse.
        let forge = |tag: u8, position: &[u8]| {
            let mut bytes = vec![FORMAT_VERSION, tag];
            bytes.extend_from_slice(position);
            bytes.extend_from_slice(&check(tag, position));
            URL_SAFE_NO_PAD.encode(bytes)
        };
        assert_eq!(
            Marker::decode(Aliases, &forge(Aliases::TAG, &[0xff, 0xfe])),
            Err(InvalidMarker)
        );
        assert_eq!(
            Marker::decode(KeyRotations, &forge(KeyRotations::TAG, &[0, 0, 1])),
            Err(InvalidMarker)
        );
        assert_eq!(
            Marker::decode(Keys, &forge(Keys::TAG, &[0; 15])),
            Err(InvalidMarker)
        );
        // Beyond the representable dates.
        assert_eq!(
            Marker::decode(Keys, &forge(Keys::TAG, &i128::MAX.to_be_bytes())),
            Err(InvalidMarker)
        );
        // Another format version.
        let mut bytes = vec![2, Aliases::TAG, b'a'];
        bytes.extend_from_slice(&check(Aliases::TAG, b"a"));
        assert_eq!(
            Marker::decode(Aliases, &URL_SAFE_NO_PAD.encode(bytes)),
            Err(InvalidMarker)
        );
        // The forger's tokens do decode when well formed (the check is not a secret).
        assert_eq!(
            Marker::decode(Aliases, &forge(Aliases::TAG, b"alias/x")).as_deref(),
            Ok("alias/x")
        );
    }

    proptest! {
        /// No string makes `decode` panic, for any listing.
        #[test]
        fn decode_never_panics(s in any::<String>()) {
            let _ = Marker::decode(Keys, &s);
            let _ = Marker::decode(Aliases, &s);
            let _ = Marker::decode(ResourceTags, &s);
            let _ = Marker::decode(KeyRotations, &s);
        }

        /// Nor does any base64url text, which gets past the first check more often.
        #[test]
        fn decode_never_panics_on_base64(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = URL_SAFE_NO_PAD.encode(&bytes);
            let _ = Marker::decode(Keys, &s);
            let _ = Marker::decode(Aliases, &s);
            let _ = Marker::decode(ResourceTags, &s);
            let _ = Marker::decode(KeyRotations, &s);
        }

        #[test]
        fn round_trip(
            nanos in -377_705_116_800_000_000_000i128..253_402_300_799_999_999_999i128,
            key_id in any::<String>(),
            name in any::<String>(),
            version in any::<u32>(),
        ) {
            let p = key_position(nanos, &key_id);
            prop_assert_eq!(Marker::decode(Keys, Marker::encode(Keys, &p).as_str()), Ok(p));
            let m = Marker::encode(Aliases, &name);
            prop_assert_eq!(Marker::decode(Aliases, m.as_str()), Ok(name.clone()));
            prop_assert_eq!(Marker::decode(ResourceTags, m.as_str()), Err(InvalidMarker));
            let m = Marker::encode(ResourceTags, &name);
            prop_assert_eq!(Marker::decode(ResourceTags, m.as_str()), Ok(name));
            let m = Marker::encode(KeyRotations, &version);
            prop_assert_eq!(Marker::decode(KeyRotations, m.as_str()), Ok(version));
        }

        /// Changing any one character of a genuine marker makes it invalid.
        #[test]
        fn tampering_is_detected(
            name in "[a-zA-Z0-9/_-]{0,40}",
            at in any::<proptest::sample::Index>(),
            with in "[A-Za-z0-9_-]",
        ) {
            let m = Marker::encode(Aliases, &name);
            let mut chars: Vec<char> = m.as_str().chars().collect();
            let i = at.index(chars.len());
            let c = with.chars().next().unwrap();
            prop_assume!(chars[i] != c);
            chars[i] = c;
            let tampered: String = chars.into_iter().collect();
            prop_assert_eq!(Marker::decode(Aliases, &tampered), Err(InvalidMarker));
        }
    }
}
