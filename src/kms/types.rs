//! Domain value types of the KMS API, parsed once at the edge: identifiers (`KeyId`, `KeyArn`,
//! `AliasName`, `AliasArn`, `KeyRef`), account/region, the wire enums (`KeySpec`, `KeyUsage`,
//! algorithms, …), `Plaintext` and `Tag`, and the client-safe `ValidationError` they fail with.
//!
//! Every type parses from its exact AWS wire string (`parse` / `FromStr`) and renders back to it
//! (`as_str` for enums and string newtypes, `Display` for composite values and `KeyId`). Serde goes
//! through the same strings, so a deserialized value is always a valid one.
//!
//! The rules follow the AWS KMS API model (botocore `kms/2014-11-01/service-2.json`) and the
//! developer guide; where AWS behaviour is only known from recorded responses, the item says so.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------------------------
// ValidationError
// ---------------------------------------------------------------------------------------------

/// How the offending value appears in a validation message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shown {
    /// `Value 'x' at …`
    Quoted(String),
    /// `Value at …` (AWS omits blob and sensitive members, e.g. `plaintext`).
    Hidden,
    /// `Value null at …` (a required member is missing).
    Null,
}

/// A request value broke an API constraint: the client gets a `ValidationException` whose message
/// is this error's `Display`, worded as AWS words it, e.g.
/// `1 validation error detected: Value 'x' at 'keySpec' failed to satisfy constraint: Member must
/// satisfy enum value set: [...]`. The message only echoes what the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError(Repr);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    /// The standard model-constraint message.
    Constraint {
        value: Shown,
        member: String,
        rule: String,
    },
    /// A free-form message AWS uses for some checks (e.g. the alias prefix rule).
    Message(String),
}

impl ValidationError {
    /// A free-form message, used verbatim.
    pub fn new(message: impl Into<String>) -> Self {
        Self(Repr::Message(message.into()))
    }

    /// `Value '<value>' at '<member>' failed to satisfy constraint: <rule>`.
    pub fn constraint(value: &str, member: &str, rule: impl Into<String>) -> Self {
        Self::with(Shown::Quoted(value.to_owned()), member, rule)
    }

    /// Like [`constraint`](Self::constraint) but without echoing the value (blob/sensitive members).
    pub fn constraint_hidden(member: &str, rule: impl Into<String>) -> Self {
        Self::with(Shown::Hidden, member, rule)
    }

    /// `Value null at '<member>' failed to satisfy constraint: Member must not be null`.
    pub fn missing(member: &str) -> Self {
        Self::with(Shown::Null, member, "Member must not be null")
    }

    fn with(value: Shown, member: &str, rule: impl Into<String>) -> Self {
        Self(Repr::Constraint {
            value,
            member: member.to_owned(),
            rule: rule.into(),
        })
    }

    /// The same error reported at another request member (`keyId` → `targetKeyId`,
    /// `tagKey` → `tags.1.member.tagKey`, …). Free-form messages are unchanged.
    #[must_use]
    pub fn at(self, member: impl Into<String>) -> Self {
        match self.0 {
            Repr::Constraint { value, rule, .. } => Self(Repr::Constraint {
                value,
                member: member.into(),
                rule,
            }),
            other => Self(other),
        }
    }

    fn length_at_least(value: &str, member: &str, min: usize) -> Self {
        Self::constraint(
            value,
            member,
            format!("Member must have length greater than or equal to {min}"),
        )
    }

    fn length_at_most(value: &str, member: &str, max: usize) -> Self {
        Self::constraint(
            value,
            member,
            format!("Member must have length less than or equal to {max}"),
        )
    }

    fn pattern(value: &str, member: &str, pattern: &str) -> Self {
        Self::constraint(
            value,
            member,
            format!("Member must satisfy regular expression pattern: {pattern}"),
        )
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Message(m) => f.write_str(m),
            Repr::Constraint {
                value,
                member,
                rule,
            } => {
                f.write_str("1 validation error detected: Value")?;
                match value {
                    Shown::Quoted(v) => write!(f, " '{v}'")?,
                    Shown::Hidden => {}
                    Shown::Null => f.write_str(" null")?,
                }
                write!(f, " at '{member}' failed to satisfy constraint: {rule}")
            }
        }
    }
}

impl std::error::Error for ValidationError {}

/// Serde through `Display`/`FromStr`, so stored and wire forms are the AWS strings and a
/// deserialized value has passed the same validation as a parsed one.
macro_rules! serde_via_str {
    ($($t:ty),* $(,)?) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

/// Length in Unicode scalar values, which is how the API model's `min`/`max` count strings.
fn char_len(s: &str) -> usize {
    s.chars().count()
}

// ---------------------------------------------------------------------------------------------
// Identifiers
// ---------------------------------------------------------------------------------------------

/// A random (v4) UUID from the process's thread-local CSPRNG (`rand`'s `ThreadRng`,
/// ChaCha seeded from the OS): request ids, event ids and key ids are made on every call,
/// and `Uuid::new_v4` without uuid's `fast-rng` feature costs a `getrandom` system call each.
pub fn random_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// A KMS key id: a UUID, always written lowercase and hyphenated
/// (`1234abcd-12ab-34cd-56ef-1234567890ab`). `Copy`; renders with `Display`.
///
/// Parsing accepts only that canonical form. (AWS multi-Region key ids, `mrk-` + 32 hex digits,
/// are not issued by this service and do not parse.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Uuid);

impl KeyId {
    /// A fresh random (v4) key id.
    pub fn new_random() -> Self {
        Self(random_uuid())
    }

    /// Parses the canonical lowercase hyphenated form; anything else is an error at `keyId`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let b = s.as_bytes();
        let canonical = b.len() == 36
            && b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            });
        match Uuid::try_parse(s) {
            Ok(u) if canonical => Ok(Self(u)),
            _ => Err(ValidationError::pattern(
                s,
                "keyId",
                "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
            )),
        }
    }

    /// From the 16 raw bytes (as stored in a ciphertext blob). Every 16-byte value is a key id.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for KeyId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An AWS account id: exactly 12 ASCII digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Parses 12 ASCII digits; errors are reported at `accountId`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.len() == 12 && s.bytes().all(|c| c.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::pattern(s, "accountId", "^[0-9]{12}$"))
        }
    }

    /// The 12 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An AWS region name such as `us-east-1`, per the API model's `RegionType`:
/// length 1–32, pattern `^([a-z]+-){2,3}\d+$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(String);

impl Region {
    /// The API model's pattern for a region name.
    pub const PATTERN: &'static str = r"^([a-z]+-){2,3}\d+$";

    /// Parses a region name; errors are reported at `region`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() {
            return Err(ValidationError::length_at_least(s, "region", 1));
        }
        if s.len() > 32 {
            return Err(ValidationError::length_at_most(s, "region", 32));
        }
        // `([a-z]+-){2,3}\d+`: 2 or 3 lowercase words, each followed by '-', then digits.
        let parts: Vec<&str> = s.split('-').collect();
        let ok = parts.split_last().is_some_and(|(digits, words)| {
            (2..=3).contains(&words.len())
                && words
                    .iter()
                    .all(|w| !w.is_empty() && w.bytes().all(|c| c.is_ascii_lowercase()))
                && !digits.is_empty()
                && digits.bytes().all(|c| c.is_ascii_digit())
        });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::pattern(s, "region", Self::PATTERN))
        }
    }

    /// The region name, e.g. `us-east-1`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The only ARN partition this service issues or accepts.
const ARN_PREFIX: &str = "arn:aws:kms:";

/// Splits `arn:aws:kms:<region>:<account>:<resource>` into its three variable parts.
fn split_kms_arn(s: &str) -> Option<(Region, AccountId, &str)> {
    let rest = s.strip_prefix(ARN_PREFIX)?;
    let mut it = rest.splitn(3, ':');
    let region = Region::parse(it.next()?).ok()?;
    let account = AccountId::parse(it.next()?).ok()?;
    Some((region, account, it.next()?))
}

fn invalid_arn(s: &str) -> ValidationError {
    ValidationError::new(format!("Invalid arn '{s}'"))
}

/// `arn:aws:kms:<region>:<account>:key/<key-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyArn {
    /// The region the key lives in.
    pub region: Region,
    /// The account that owns the key.
    pub account: AccountId,
    /// The key's id.
    pub key_id: KeyId,
}

impl KeyArn {
    /// The ARN of key `key_id` of `account` in `region`.
    pub fn new(region: Region, account: AccountId, key_id: KeyId) -> Self {
        Self {
            region,
            account,
            key_id,
        }
    }

    /// Parses a key ARN; anything else is `Invalid arn '<s>'`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let (region, account, resource) = split_kms_arn(s).ok_or_else(|| invalid_arn(s))?;
        let id = resource
            .strip_prefix("key/")
            .ok_or_else(|| invalid_arn(s))?;
        let key_id = KeyId::parse(id).map_err(|_| invalid_arn(s))?;
        Ok(Self::new(region, account, key_id))
    }
}

impl fmt::Display for KeyArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ARN_PREFIX}{}:{}:key/{}",
            self.region.as_str(),
            self.account.as_str(),
            self.key_id
        )
    }
}

/// An alias name, `alias/<name>`.
///
/// Rules: starts with `alias/`; the whole string is 1–256 characters; the API model's pattern is
/// `^[a-zA-Z0-9:/_-]+$`, but the developer guide allows only alphanumerics, `/`, `_` and `-`, so a
/// `:` is refused too; the name after the prefix must not be empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasName(String);

impl AliasName {
    /// Prefix every alias name starts with.
    pub const PREFIX: &'static str = "alias/";
    /// Prefix of the aliases of AWS managed keys; customers cannot create or change these.
    pub const AWS_RESERVED_PREFIX: &'static str = "alias/aws/";
    const MODEL_PATTERN: &'static str = "^[a-zA-Z0-9:/_-]+$";

    /// Parses an alias name (the API model's constraints, then AWS's `alias/` prefix and
    /// character rules); errors are reported at `aliasName`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const MEMBER: &str = "aliasName";
        if s.is_empty() {
            return Err(ValidationError::length_at_least(s, MEMBER, 1));
        }
        if char_len(s) > 256 {
            return Err(ValidationError::length_at_most(s, MEMBER, 256));
        }
        if !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'/' | b'_' | b'-'))
        {
            return Err(ValidationError::pattern(s, MEMBER, Self::MODEL_PATTERN));
        }
        // Recorded AWS response (CreateAlias with a name lacking the prefix).
        let Some(name) = s.strip_prefix(Self::PREFIX) else {
            return Err(ValidationError::new(
                "Alias must start with the prefix \"alias/\". Please see \
                 https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html",
            ));
        };
        if name.is_empty() || s.contains(':') {
            return Err(ValidationError::new(format!(
                "{s} contains invalid characters for an alias"
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The full name including the `alias/` prefix (the wire form).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is an `alias/aws/…` name, reserved for AWS managed keys.
    pub fn is_aws_reserved(&self) -> bool {
        self.0.starts_with(Self::AWS_RESERVED_PREFIX)
    }
}

/// `arn:aws:kms:<region>:<account>:alias/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasArn {
    /// The region the alias lives in.
    pub region: Region,
    /// The account that owns the alias.
    pub account: AccountId,
    /// The alias name, `alias/` prefix included.
    pub alias: AliasName,
}

impl AliasArn {
    /// The ARN of alias `alias` of `account` in `region`.
    pub fn new(region: Region, account: AccountId, alias: AliasName) -> Self {
        Self {
            region,
            account,
            alias,
        }
    }

    /// Parses an alias ARN; anything else is `Invalid arn '<s>'`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let (region, account, resource) = split_kms_arn(s).ok_or_else(|| invalid_arn(s))?;
        let alias = AliasName::parse(resource).map_err(|_| invalid_arn(s))?;
        Ok(Self::new(region, account, alias))
    }
}

impl fmt::Display for AliasArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ARN_PREFIX}{}:{}:{}",
            self.region.as_str(),
            self.account.as_str(),
            self.alias.as_str()
        )
    }
}

macro_rules! display_as_str {
    ($($t:ty),* $(,)?) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(AccountId, Region, AliasName);

macro_rules! from_str_via_parse {
    ($($t:ty),* $(,)?) => {$(
        impl FromStr for $t {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    )*};
}
from_str_via_parse!(AccountId, Region, KeyArn, AliasName, AliasArn);
serde_via_str!(KeyId, AccountId, Region, KeyArn, AliasName, AliasArn);

/// What a `KeyId` request member may name: a key id, key ARN, alias name or alias ARN.
///
/// Resolving it (does the key exist? is the ARN's region/account ours?) is the caller's job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// A key id (UUID).
    Id(KeyId),
    /// A key ARN.
    KeyArn(KeyArn),
    /// An alias name (`alias/...`).
    AliasName(AliasName),
    /// An alias ARN.
    AliasArn(AliasArn),
    /// Of valid length but not a well-formed id, ARN or alias: it resolves to nothing, and
    /// resolution answers `NotFoundException` (`Invalid keyId '<value>'`) as AWS does.
    Malformed(String),
}

/// Why a `KeyId` member did not parse, split by the exception AWS answers with.
///
/// AWS checks only the model's length constraint (1–2048) as a `ValidationException`. A value
/// of valid length that is not a well-formed key id, key ARN, alias name or alias ARN is answered
/// `NotFoundException` with the message `Invalid keyId '<value>'` — recorded from real AWS for
/// DescribeKey (`fake-key-id`, a UUID without hyphens `134f2428cec14b25a1ae9048164dba47`,
/// `mrk-fake-key-id`) and GenerateMac (`key_id`) in LocalStack's AWS-validated snapshots
/// (`tests/aws/services/kms/test_kms.snapshot.json`). A well-formed id that names no key is also
/// `NotFoundException`, but that is decided after lookup (`Key '<arn>' does not exist`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefError {
    /// Answer `ValidationException` with this message.
    #[error("{0}")]
    Validation(ValidationError),
    /// Answer `NotFoundException` with this message.
    #[error("{0}")]
    NotFound(String),
}

impl KeyRefError {
    /// Report a length violation at another member (`targetKeyId`, `destinationKeyId`, …).
    #[must_use]
    pub fn at(self, member: impl Into<String>) -> Self {
        match self {
            Self::Validation(e) => Self::Validation(e.at(member)),
            other => other,
        }
    }
}

impl KeyRef {
    /// Longest `KeyId` member, in characters (the API model's constraint).
    pub const MAX_LEN: usize = 2048;

    /// Parses a `KeyId` member (errors reported at `keyId`; use [`KeyRefError::at`] to rename).
    pub fn parse(s: &str) -> Result<Self, KeyRefError> {
        if s.is_empty() {
            return Err(KeyRefError::Validation(ValidationError::length_at_least(
                s, "keyId", 1,
            )));
        }
        if char_len(s) > Self::MAX_LEN {
            return Err(KeyRefError::Validation(ValidationError::length_at_most(
                s,
                "keyId",
                Self::MAX_LEN,
            )));
        }
        let parsed = if s.starts_with("arn:") {
            KeyArn::parse(s)
                .map(Self::KeyArn)
                .or_else(|_| AliasArn::parse(s).map(Self::AliasArn))
        } else if s.starts_with(AliasName::PREFIX) {
            AliasName::parse(s).map(Self::AliasName)
        } else {
            KeyId::parse(s).map(Self::Id)
        };
        parsed.map_err(|_| KeyRefError::NotFound(format!("Invalid keyId '{s}'")))
    }
}

impl KeyRef {
    /// Parses a key reference member at the API edge: a length violation is a
    /// `ValidationException` now; a malformed value becomes [`KeyRef::Malformed`], which
    /// resolution answers with `NotFoundException` (after the other members are validated).
    pub fn from_member(s: &str) -> Result<Self, ValidationError> {
        match Self::parse(s) {
            Ok(r) => Ok(r),
            Err(KeyRefError::Validation(v)) => Err(v),
            Err(KeyRefError::NotFound(_)) => Ok(Self::Malformed(s.to_string())),
        }
    }
}

impl FromStr for KeyRef {
    type Err = KeyRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::KeyArn(a) => a.fmt(f),
            Self::AliasName(a) => a.fmt(f),
            Self::AliasArn(a) => a.fmt(f),
            Self::Malformed(s) => f.write_str(s),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Grant principals
// ---------------------------------------------------------------------------------------------

/// Whether `s` names a principal a grant may name as its grantee or retiring principal: an
/// account (`111122223333`, `arn:aws:iam::111122223333:root`), an IAM user or role, an
/// assumed-role session or federated user (`arn:aws:sts::…`), or an AWS service principal
/// (`logs.us-east-1.amazonaws.com`). Partitions `aws`, `aws-cn`, `aws-us-gov`.
pub fn is_grant_principal(s: &str) -> bool {
    let account = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    let name = |n: &str| {
        !n.is_empty()
            && n.len() <= 128
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    };
    let path_name = |p: &str| p.len() <= 512 && p.split('/').all(name);
    if account(s) {
        return true;
    }
    if let Some(service) = s
        .strip_suffix(".amazonaws.com")
        .or_else(|| s.strip_suffix(".amazonaws.com.cn"))
    {
        return !service.is_empty()
            && service.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
    }
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [prefix, partition, service, region, acct, resource] = parts.as_slice() else {
        return false;
    };
    if *prefix != "arn"
        || !["aws", "aws-cn", "aws-us-gov"].contains(partition)
        || !region.is_empty()
        || !account(acct)
    {
        return false;
    }
    match *service {
        "iam" => {
            *resource == "root"
                || resource.strip_prefix("user/").is_some_and(path_name)
                || resource.strip_prefix("role/").is_some_and(path_name)
        }
        "sts" => {
            if let Some(rest) = resource.strip_prefix("assumed-role/") {
                rest.split_once('/')
                    .is_some_and(|(role, session)| name(role) && name(session))
            } else {
                resource.strip_prefix("federated-user/").is_some_and(name)
            }
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Wire enums
// ---------------------------------------------------------------------------------------------

/// Declares a closed enum of AWS wire strings with `ALL`, `as_str`, `parse` (an unknown string is
/// the AWS enum-set validation error at the given member), `FromStr`, `Display` and serde.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident at $member:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $(
                #[doc = concat!("The AWS wire value `", $wire, "`.")]
                $(#[$vmeta])*
                $variant,
            )+
        }

        impl $name {
            /// Every value, in the order of the API model's enum.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The exact AWS wire string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }

            /// Parses the exact (case-sensitive) wire string; errors are reported at
            #[doc = concat!("`", $member, "`.")]
            pub fn parse(s: &str) -> Result<Self, ValidationError> {
                match s {
                    $($wire => Ok(Self::$variant),)+
                    _ => Err(ValidationError::constraint(
                        s,
                        $member,
                        concat!("Member must satisfy enum value set: [", wire_enum!(@join $($wire),+), "]"),
                    )),
                }
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        serde_via_str!($name);
    };
    (@join $first:literal $(, $rest:literal)*) => { concat!($first $(, ", ", $rest)*) };
}

wire_enum! {
    /// The cryptographic configuration of a KMS key (`KeySpec`).
    KeySpec at "keySpec" {
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        EccNistP256 = "ECC_NIST_P256",
        EccNistP384 = "ECC_NIST_P384",
        EccNistP521 = "ECC_NIST_P521",
        EccSecgP256k1 = "ECC_SECG_P256K1",
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        Hmac224 = "HMAC_224",
        Hmac256 = "HMAC_256",
        Hmac384 = "HMAC_384",
        Hmac512 = "HMAC_512",
        /// China Regions only in AWS.
        Sm2 = "SM2",
        MlDsa44 = "ML_DSA_44",
        MlDsa65 = "ML_DSA_65",
        MlDsa87 = "ML_DSA_87",
        EccNistEdwards25519 = "ECC_NIST_EDWARDS25519",
    }
}

wire_enum! {
    /// The operations a KMS key may be used for (`KeyUsageType`).
    KeyUsage at "keyUsage" {
        SignVerify = "SIGN_VERIFY",
        EncryptDecrypt = "ENCRYPT_DECRYPT",
        GenerateVerifyMac = "GENERATE_VERIFY_MAC",
        KeyAgreement = "KEY_AGREEMENT",
    }
}

wire_enum! {
    /// The lifecycle state of a KMS key (`KeyState`).
    KeyState at "keyState" {
        Creating = "Creating",
        Enabled = "Enabled",
        Disabled = "Disabled",
        PendingDeletion = "PendingDeletion",
        PendingImport = "PendingImport",
        PendingReplicaDeletion = "PendingReplicaDeletion",
        Unavailable = "Unavailable",
        Updating = "Updating",
    }
}

wire_enum! {
    /// Where a key's material came from (`OriginType`).
    Origin at "origin" {
        AwsKms = "AWS_KMS",
        External = "EXTERNAL",
        AwsCloudhsm = "AWS_CLOUDHSM",
        ExternalKeyStore = "EXTERNAL_KEY_STORE",
    }
}

wire_enum! {
    /// Who manages a key (`KeyManagerType`).
    KeyManager at "keyManager" {
        Aws = "AWS",
        Customer = "CUSTOMER",
    }
}

wire_enum! {
    /// `EncryptionAlgorithmSpec`.
    EncryptionAlgorithm at "encryptionAlgorithm" {
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        RsaesOaepSha1 = "RSAES_OAEP_SHA_1",
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
        Sm2Pke = "SM2PKE",
    }
}

wire_enum! {
    /// `SigningAlgorithmSpec`.
    SigningAlgorithm at "signingAlgorithm" {
        RsassaPssSha256 = "RSASSA_PSS_SHA_256",
        RsassaPssSha384 = "RSASSA_PSS_SHA_384",
        RsassaPssSha512 = "RSASSA_PSS_SHA_512",
        RsassaPkcs1V15Sha256 = "RSASSA_PKCS1_V1_5_SHA_256",
        RsassaPkcs1V15Sha384 = "RSASSA_PKCS1_V1_5_SHA_384",
        RsassaPkcs1V15Sha512 = "RSASSA_PKCS1_V1_5_SHA_512",
        EcdsaSha256 = "ECDSA_SHA_256",
        EcdsaSha384 = "ECDSA_SHA_384",
        EcdsaSha512 = "ECDSA_SHA_512",
        Sm2Dsa = "SM2DSA",
        MlDsaShake256 = "ML_DSA_SHAKE_256",
        Ed25519Sha512 = "ED25519_SHA_512",
        Ed25519PhSha512 = "ED25519_PH_SHA_512",
    }
}

wire_enum! {
    /// `MacAlgorithmSpec`.
    MacAlgorithm at "macAlgorithm" {
        HmacSha224 = "HMAC_SHA_224",
        HmacSha256 = "HMAC_SHA_256",
        HmacSha384 = "HMAC_SHA_384",
        HmacSha512 = "HMAC_SHA_512",
    }
}

wire_enum! {
    /// `KeyAgreementAlgorithmSpec`.
    KeyAgreementAlgorithm at "keyAgreementAlgorithm" {
        Ecdh = "ECDH",
    }
}

wire_enum! {
    /// How imported key material is wrapped (`AlgorithmSpec` of GetParametersForImport).
    WrappingAlgorithm at "wrappingAlgorithm" {
        /// Deprecated by AWS (refused since October 2023).
        RsaesPkcs1V15 = "RSAES_PKCS1_V1_5",
        RsaesOaepSha1 = "RSAES_OAEP_SHA_1",
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
        RsaAesKeyWrapSha1 = "RSA_AES_KEY_WRAP_SHA_1",
        RsaAesKeyWrapSha256 = "RSA_AES_KEY_WRAP_SHA_256",
        /// China Regions only in AWS.
        Sm2Pke = "SM2PKE",
    }
}

wire_enum! {
    /// The wrapping key pair of GetParametersForImport (`WrappingKeySpec`).
    WrappingKeySpec at "wrappingKeySpec" {
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        /// China Regions only in AWS.
        Sm2 = "SM2",
    }
}

wire_enum! {
    /// Whether imported key material expires (`ExpirationModelType`).
    ExpirationModel at "expirationModel" {
        KeyMaterialExpires = "KEY_MATERIAL_EXPIRES",
        KeyMaterialDoesNotExpire = "KEY_MATERIAL_DOES_NOT_EXPIRE",
    }
}

wire_enum! {
    /// ImportKeyMaterial's `ImportType`.
    ImportType at "importType" {
        NewKeyMaterial = "NEW_KEY_MATERIAL",
        ExistingKeyMaterial = "EXISTING_KEY_MATERIAL",
    }
}

wire_enum! {
    /// Whether a key material is in the HSMs (`ImportState` of ListKeyRotations).
    ImportState at "importState" {
        Imported = "IMPORTED",
        PendingImport = "PENDING_IMPORT",
    }
}

wire_enum! {
    /// The data key of GenerateDataKey(WithoutPlaintext) (`DataKeySpec`).
    DataKeySpec at "keySpec" {
        Aes256 = "AES_256",
        Aes128 = "AES_128",
    }
}

wire_enum! {
    /// The key pair of GenerateDataKeyPair(WithoutPlaintext) (`DataKeyPairSpec`).
    DataKeyPairSpec at "keyPairSpec" {
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        EccNistP256 = "ECC_NIST_P256",
        EccNistP384 = "ECC_NIST_P384",
        EccNistP521 = "ECC_NIST_P521",
        EccSecgP256k1 = "ECC_SECG_P256K1",
        Sm2 = "SM2",
        EccNistEdwards25519 = "ECC_NIST_EDWARDS25519",
    }
}

wire_enum! {
    /// An operation a grant may allow (`GrantOperation`).
    GrantOperation at "operations" {
        Decrypt = "Decrypt",
        Encrypt = "Encrypt",
        GenerateDataKey = "GenerateDataKey",
        GenerateDataKeyWithoutPlaintext = "GenerateDataKeyWithoutPlaintext",
        ReEncryptFrom = "ReEncryptFrom",
        ReEncryptTo = "ReEncryptTo",
        Sign = "Sign",
        Verify = "Verify",
        GetPublicKey = "GetPublicKey",
        CreateGrant = "CreateGrant",
        RetireGrant = "RetireGrant",
        DescribeKey = "DescribeKey",
        GenerateDataKeyPair = "GenerateDataKeyPair",
        GenerateDataKeyPairWithoutPlaintext = "GenerateDataKeyPairWithoutPlaintext",
        GenerateMac = "GenerateMac",
        VerifyMac = "VerifyMac",
        DeriveSharedSecret = "DeriveSharedSecret",
    }
}

wire_enum! {
    /// What Sign/Verify's `Message` is (`MessageType`). EXTERNAL_MU is for ML-DSA keys only.
    MessageType at "messageType" {
        Raw = "RAW",
        Digest = "DIGEST",
        ExternalMu = "EXTERNAL_MU",
    }
}

impl DataKeySpec {
    /// Length of the generated data key in bytes.
    pub const fn byte_len(self) -> usize {
        match self {
            Self::Aes256 => 32,
            Self::Aes128 => 16,
        }
    }
}

impl KeySpec {
    /// The key usages AWS allows for this spec (CreateKey `KeyUsage` documentation):
    /// symmetric → ENCRYPT_DECRYPT; HMAC → GENERATE_VERIFY_MAC; RSA → ENCRYPT_DECRYPT or
    /// SIGN_VERIFY; NIST P-curves → SIGN_VERIFY or KEY_AGREEMENT; secp256k1, Ed25519 and ML-DSA →
    /// SIGN_VERIFY; SM2 → ENCRYPT_DECRYPT, SIGN_VERIFY or KEY_AGREEMENT.
    pub const fn allowed_usages(self) -> &'static [KeyUsage] {
        use KeyUsage::*;
        match self {
            Self::SymmetricDefault => &[EncryptDecrypt],
            Self::Hmac224 | Self::Hmac256 | Self::Hmac384 | Self::Hmac512 => &[GenerateVerifyMac],
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => &[EncryptDecrypt, SignVerify],
            Self::EccNistP256 | Self::EccNistP384 | Self::EccNistP521 => {
                &[SignVerify, KeyAgreement]
            }
            Self::EccSecgP256k1
            | Self::EccNistEdwards25519
            | Self::MlDsa44
            | Self::MlDsa65
            | Self::MlDsa87 => &[SignVerify],
            Self::Sm2 => &[EncryptDecrypt, SignVerify, KeyAgreement],
        }
    }

    /// Whether `usage` is a valid usage for a key of this spec (see [`allowed_usages`]).
    ///
    /// [`allowed_usages`]: Self::allowed_usages
    pub fn default_usage_allowed(self, usage: KeyUsage) -> bool {
        self.allowed_usages().contains(&usage)
    }

    /// The usage CreateKey assumes when `KeyUsage` is omitted: only symmetric encryption keys
    /// have one. For every other spec AWS answers ValidationException "You must specify a
    /// KeyUsage value for all KMS keys except for symmetric encryption keys."
    pub const fn default_usage(self) -> Option<KeyUsage> {
        match self {
            Self::SymmetricDefault => Some(KeyUsage::EncryptDecrypt),
            _ => None,
        }
    }

    /// `KeyMetadata.EncryptionAlgorithms` for a key of this spec and usage (empty if the
    /// combination has none).
    pub fn encryption_algorithms(self, usage: KeyUsage) -> Vec<EncryptionAlgorithm> {
        use EncryptionAlgorithm::*;
        if usage != KeyUsage::EncryptDecrypt || !self.default_usage_allowed(usage) {
            return Vec::new();
        }
        match self {
            Self::SymmetricDefault => vec![SymmetricDefault],
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => vec![RsaesOaepSha1, RsaesOaepSha256],
            Self::Sm2 => vec![Sm2Pke],
            _ => Vec::new(),
        }
    }

    /// `KeyMetadata.SigningAlgorithms` for a key of this spec and usage (empty if the
    /// combination has none). Lists are alphabetical, the order AWS's DescribeKey examples show
    /// for RSA (PKCS1 before PSS); the Ed25519 order is inferred from that, not observed.
    pub fn signing_algorithms(self, usage: KeyUsage) -> Vec<SigningAlgorithm> {
        use SigningAlgorithm::*;
        if usage != KeyUsage::SignVerify || !self.default_usage_allowed(usage) {
            return Vec::new();
        }
        match self {
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => vec![
                RsassaPkcs1V15Sha256,
                RsassaPkcs1V15Sha384,
                RsassaPkcs1V15Sha512,
                RsassaPssSha256,
                RsassaPssSha384,
                RsassaPssSha512,
            ],
            Self::EccNistP256 | Self::EccSecgP256k1 => vec![EcdsaSha256],
            Self::EccNistP384 => vec![EcdsaSha384],
            Self::EccNistP521 => vec![EcdsaSha512],
            Self::EccNistEdwards25519 => vec![Ed25519PhSha512, Ed25519Sha512],
            Self::MlDsa44 | Self::MlDsa65 | Self::MlDsa87 => vec![MlDsaShake256],
            Self::Sm2 => vec![Sm2Dsa],
            _ => Vec::new(),
        }
    }

    /// `KeyMetadata.MacAlgorithms` for a key of this spec and usage (empty if none).
    pub fn mac_algorithms(self, usage: KeyUsage) -> Vec<MacAlgorithm> {
        if usage != KeyUsage::GenerateVerifyMac {
            return Vec::new();
        }
        match self {
            Self::Hmac224 => vec![MacAlgorithm::HmacSha224],
            Self::Hmac256 => vec![MacAlgorithm::HmacSha256],
            Self::Hmac384 => vec![MacAlgorithm::HmacSha384],
            Self::Hmac512 => vec![MacAlgorithm::HmacSha512],
            _ => Vec::new(),
        }
    }

    /// `KeyMetadata.KeyAgreementAlgorithms` for a key of this spec and usage (empty if none).
    pub fn key_agreement_algorithms(self, usage: KeyUsage) -> Vec<KeyAgreementAlgorithm> {
        if usage == KeyUsage::KeyAgreement && self.default_usage_allowed(usage) {
            vec![KeyAgreementAlgorithm::Ecdh]
        } else {
            Vec::new()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plaintext and tags
// ---------------------------------------------------------------------------------------------

/// Secret bytes of 1–4096 bytes (`PlaintextType`), wiped on drop. `Debug` never shows them.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// Longest plaintext, in bytes (`PlaintextType`).
    pub const MAX_LEN: usize = 4096;

    /// Takes ownership of `bytes`; errors (without echoing them) at `plaintext`.
    pub fn new(bytes: impl Into<Zeroizing<Vec<u8>>>) -> Result<Self, ValidationError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(ValidationError::constraint_hidden(
                "plaintext",
                "Member must have length greater than or equal to 1",
            ));
        }
        if bytes.len() > Self::MAX_LEN {
            return Err(ValidationError::constraint_hidden(
                "plaintext",
                format!(
                    "Member must have length less than or equal to {}",
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(Self(bytes))
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes, 1–4096.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a `Plaintext` holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret bytes, still wiped on drop.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext(<{} bytes redacted>)", self.0.len())
    }
}

/// A resource tag: key 1–128 characters, value 0–256 characters. Serialized as
/// `{"TagKey": …, "TagValue": …}`, the API's `Tag` shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawTag")]
pub struct Tag {
    #[serde(rename = "TagKey")]
    key: String,
    #[serde(rename = "TagValue")]
    value: String,
}

#[derive(Deserialize)]
struct RawTag {
    #[serde(rename = "TagKey")]
    key: String,
    #[serde(rename = "TagValue")]
    value: String,
}

impl TryFrom<RawTag> for Tag {
    type Error = ValidationError;
    fn try_from(raw: RawTag) -> Result<Self, Self::Error> {
        Tag::new(raw.key, raw.value)
    }
}

impl Tag {
    /// Validates the lengths; errors are at `tagKey`/`tagValue` (AWS reports
    /// `tags.<n>.member.tagKey`: rename with [`ValidationError::at`]).
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Result<Self, ValidationError> {
        let (key, value) = (key.into(), value.into());
        if key.is_empty() {
            return Err(ValidationError::length_at_least(&key, "tagKey", 1));
        }
        if char_len(&key) > 128 {
            return Err(ValidationError::length_at_most(&key, "tagKey", 128));
        }
        if char_len(&value) > 256 {
            return Err(ValidationError::length_at_most(&value, "tagValue", 256));
        }
        Ok(Self { key, value })
    }

    /// `TagKey`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `TagValue`, possibly empty.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Tag keys starting with `aws:` (any case) are reserved; AWS refuses them with
    /// `TagException` "Tags beginning with aws: are reserved".
    pub fn is_aws_reserved(&self) -> bool {
        self.key
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("aws:"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn random_uuids_are_version_4_and_distinct() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        for u in [a, b] {
            assert_eq!(u.get_version(), Some(uuid::Version::Random));
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
            assert!(KeyId::parse(&u.to_string()).is_ok());
        }
    }

    #[test]
    fn key_id_canonical_only() {
        let id = KeyId::parse(ID).unwrap();
        assert_eq!(id.to_string(), ID);
        assert_eq!(KeyId::from_bytes(*id.as_bytes()), id);
        for bad in [
            "1234ABCD-12ab-34cd-56ef-1234567890ab",
            "1234abcd12ab34cd56ef1234567890ab",
            "{1234abcd-12ab-34cd-56ef-1234567890ab}",
            "urn:uuid:1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "1234abcd-12ab-34cd-56ef-1234567890a",
            "",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad}");
        }
        let r = KeyId::new_random();
        assert_eq!(KeyId::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn arns_round_trip() {
        let s = format!("arn:aws:kms:us-east-2:111122223333:key/{ID}");
        let arn = KeyArn::parse(&s).unwrap();
        assert_eq!(arn.region.as_str(), "us-east-2");
        assert_eq!(arn.account.as_str(), "111122223333");
        assert_eq!(arn.to_string(), s);
        let a = "arn:aws:kms:us-gov-west-1:111122223333:alias/Example_Alias-1";
        let alias = AliasArn::parse(a).unwrap();
        assert_eq!(alias.alias.as_str(), "alias/Example_Alias-1");
        assert_eq!(alias.to_string(), a);
        for bad in [
            "arn:aws:kms:us-east-2:11112222333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws-cn:kms:cn-north-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:useast2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-2:111122223333:key/nope",
            "arn:aws:kms:us-east-2:111122223333:alias/",
            "arn:aws:s3:::bucket",
        ] {
            assert!(
                KeyArn::parse(bad).is_err() && AliasArn::parse(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn region_pattern() {
        for ok in ["us-east-1", "ap-southeast-2", "us-gov-west-1", "cn-north-1"] {
            assert!(Region::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "us-1",
            "us-east",
            "US-east-1",
            "a-b-c-d-1",
            "us--east-1",
            "us-east-1a",
        ] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alias_rules() {
        let a = AliasName::parse("alias/aws/ebs").unwrap();
        assert!(a.is_aws_reserved());
        assert!(!AliasName::parse("alias/awsome").unwrap().is_aws_reserved());
        assert_eq!(
            AliasName::parse("ExampleAlias").unwrap_err().to_string(),
            "Alias must start with the prefix \"alias/\". Please see \
             https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html"
        );
        assert_eq!(
            AliasName::parse("alias/a b").unwrap_err().to_string(),
            "1 validation error detected: Value 'alias/a b' at 'aliasName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        );
        assert!(AliasName::parse("alias/a:b").is_err());
        assert!(AliasName::parse("alias/").is_err());
        let long = format!("alias/{}", "x".repeat(250));
        assert!(AliasName::parse(&long).is_ok());
        assert!(AliasName::parse(&format!("{long}x")).is_err());
    }

    #[test]
    fn key_ref_forms_and_errors() {
        assert_eq!(KeyRef::parse(ID).unwrap(), KeyRef::Id(ID.parse().unwrap()));
        for s in [
            ID.to_owned(),
            format!("arn:aws:kms:us-east-2:111122223333:key/{ID}"),
            "alias/ExampleAlias".to_owned(),
            "arn:aws:kms:us-east-2:111122223333:alias/ExampleAlias".to_owned(),
        ] {
            assert_eq!(KeyRef::parse(&s).unwrap().to_string(), s);
        }
        assert!(matches!(
            KeyRef::parse("alias/x").unwrap(),
            KeyRef::AliasName(_)
        ));
        assert!(matches!(
            KeyRef::parse("arn:aws:kms:us-east-2:111122223333:alias/x").unwrap(),
            KeyRef::AliasArn(_)
        ));

        // Malformed but of valid length: NotFoundException, as AWS answers.
        assert_eq!(
            KeyRef::parse("fake-key-id").unwrap_err(),
            KeyRefError::NotFound("Invalid keyId 'fake-key-id'".into())
        );
        for s in [
            "134f2428cec14b25a1ae9048164dba47",
            "alias/",
            "arn:aws:kms:x",
            "x",
        ] {
            assert!(
                matches!(KeyRef::parse(s), Err(KeyRefError::NotFound(_))),
                "{s}"
            );
        }
        // Length violations: ValidationException.
        assert_eq!(
            KeyRef::parse("").unwrap_err().to_string(),
            "1 validation error detected: Value '' at 'keyId' failed to satisfy constraint: \
             Member must have length greater than or equal to 1"
        );
        let long = "a".repeat(2049);
        let err = KeyRef::parse(&long).unwrap_err().at("targetKeyId");
        assert!(matches!(&err, KeyRefError::Validation(_)));
        assert!(err.to_string().contains("at 'targetKeyId'"));
        assert!(err.to_string().ends_with("less than or equal to 2048"));
        assert!(matches!(
            KeyRef::parse(&"a".repeat(2048)),
            Err(KeyRefError::NotFound(_))
        ));
    }

    #[test]
    fn enums_parse_render_and_serde() {
        assert_eq!(KeySpec::ALL.len(), 17);
        for &k in KeySpec::ALL {
            assert_eq!(KeySpec::parse(k.as_str()).unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<KeySpec>(&json).unwrap(), k);
        }
        assert_eq!(KeyState::PendingDeletion.as_str(), "PendingDeletion");
        assert_eq!(
            MacAlgorithm::parse("INVALID").unwrap_err().to_string(),
            "1 validation error detected: Value 'INVALID' at 'macAlgorithm' failed to satisfy \
             constraint: Member must satisfy enum value set: \
             [HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384, HMAC_SHA_512]"
        );
        assert!(KeyUsage::parse("encrypt_decrypt").is_err());
        assert!(serde_json::from_str::<KeyUsage>("\"NOPE\"").is_err());
        assert_eq!(
            EncryptionAlgorithm::parse("X")
                .unwrap_err()
                .at("destinationEncryptionAlgorithm")
                .to_string()
                .split(" at ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next(),
            Some("'destinationEncryptionAlgorithm'")
        );
    }

    #[test]
    fn spec_usage_and_algorithms() {
        use KeyUsage::*;
        assert!(KeySpec::SymmetricDefault.default_usage_allowed(EncryptDecrypt));
        assert!(!KeySpec::SymmetricDefault.default_usage_allowed(SignVerify));
        assert!(!KeySpec::Rsa2048.default_usage_allowed(KeyAgreement));
        assert!(KeySpec::EccNistP256.default_usage_allowed(KeyAgreement));
        assert!(!KeySpec::EccSecgP256k1.default_usage_allowed(KeyAgreement));
        assert!(!KeySpec::EccNistEdwards25519.default_usage_allowed(KeyAgreement));
        assert_eq!(KeySpec::Hmac256.default_usage(), None);

        assert_eq!(
            KeySpec::SymmetricDefault.encryption_algorithms(EncryptDecrypt),
            [EncryptionAlgorithm::SymmetricDefault]
        );
        assert_eq!(
            KeySpec::Rsa4096.encryption_algorithms(EncryptDecrypt),
            [
                EncryptionAlgorithm::RsaesOaepSha1,
                EncryptionAlgorithm::RsaesOaepSha256
            ]
        );
        assert!(KeySpec::Rsa4096
            .encryption_algorithms(SignVerify)
            .is_empty());
        let rsa: Vec<_> = KeySpec::Rsa2048
            .signing_algorithms(SignVerify)
            .iter()
            .map(|a| a.as_str())
            .collect();
        assert_eq!(
            rsa,
            [
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384",
                "RSASSA_PKCS1_V1_5_SHA_512",
                "RSASSA_PSS_SHA_256",
                "RSASSA_PSS_SHA_384",
                "RSASSA_PSS_SHA_512"
            ]
        );
        assert_eq!(
            KeySpec::EccNistP521.signing_algorithms(SignVerify),
            [SigningAlgorithm::EcdsaSha512]
        );
        assert!(KeySpec::EccNistP521
            .signing_algorithms(KeyAgreement)
            .is_empty());
        assert_eq!(
            KeySpec::EccNistP384.key_agreement_algorithms(KeyAgreement),
            [KeyAgreementAlgorithm::Ecdh]
        );
        assert_eq!(
            KeySpec::Hmac384.mac_algorithms(GenerateVerifyMac),
            [MacAlgorithm::HmacSha384]
        );
        // Every allowed combination yields exactly one non-empty algorithm list.
        for &spec in KeySpec::ALL {
            for &usage in KeyUsage::ALL {
                let lists = [
                    !spec.encryption_algorithms(usage).is_empty(),
                    !spec.signing_algorithms(usage).is_empty(),
                    !spec.mac_algorithms(usage).is_empty(),
                    !spec.key_agreement_algorithms(usage).is_empty(),
                ];
                let n = lists.iter().filter(|&&b| b).count();
                let expected = usize::from(spec.default_usage_allowed(usage));
                assert_eq!(n, expected, "{spec} {usage}");
            }
        }
    }

    #[test]
    fn plaintext_bounds_and_redaction() {
        assert!(Plaintext::new(Vec::new()).is_err());
        assert_eq!(
            Plaintext::new(vec![0; 4097]).unwrap_err().to_string(),
            "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: \
             Member must have length less than or equal to 4096"
        );
        let p = Plaintext::new(b"hunter2".to_vec()).unwrap();
        assert_eq!(p.as_bytes(), b"hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(Plaintext::new(vec![7; 4096]).is_ok());
    }

    #[test]
    fn tags() {
        let t = Tag::new("Project", "").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"TagKey":"Project","TagValue":""}"#
        );
        assert_eq!(
            serde_json::from_str::<Tag>(r#"{"TagKey":"Project","TagValue":""}"#).unwrap(),
            t
        );
        assert!(serde_json::from_str::<Tag>(r#"{"TagKey":"","TagValue":"v"}"#).is_err());
        assert!(Tag::new("k".repeat(129), "v").is_err());
        assert!(Tag::new("k", "v".repeat(257)).is_err());
        assert!(Tag::new("k".repeat(128), "v".repeat(256)).is_ok());
        assert!(Tag::new("AWS:x", "v").unwrap().is_aws_reserved());
        assert_eq!(
            Tag::new("k".repeat(129), "v")
                .unwrap_err()
                .at("tags.1.member.tagKey")
                .to_string(),
            format!(
                "1 validation error detected: Value '{}' at 'tags.1.member.tagKey' failed to \
                 satisfy constraint: Member must have length less than or equal to 128",
                "k".repeat(129)
            )
        );
    }

    #[test]
    fn missing_member_message() {
        assert_eq!(
            ValidationError::missing("keyId").to_string(),
            "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: \
             Member must not be null"
        );
    }
}
