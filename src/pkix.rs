//! Host-side encodings around the HSM's asymmetric operations, none of which touch a KMS
//! key's private half: DER (SubjectPublicKeyInfo of EC and RSA public keys, PKCS#8 of a
//! *data* key pair's private key, ECDSA signatures), the PKCS#1 v1.5 DigestInfo prefixes,
//! EC points as PKCS#11 returns them, and EME-OAEP decoding of a block the token decrypted
//! with `CKM_RSA_X_509` (for tokens that refuse OAEP with SHA-256).

use sha2::Digest;
use subtle::ConstantTimeEq;

/// Curves the service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
    Secp256k1,
}

impl Curve {
    /// DER of the named-curve OID (the value of `CKA_EC_PARAMS`).
    pub fn params_der(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07],
            Curve::P384 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22],
            Curve::P521 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23],
            Curve::Secp256k1 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A],
        }
    }

    /// Bytes of a field element / scalar.
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// Length of an uncompressed point `04 ‖ X ‖ Y`.
    pub fn point_len(self) -> usize {
        1 + 2 * self.field_len()
    }

    pub fn from_params_der(der: &[u8]) -> Option<Curve> {
        [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1]
            .into_iter()
            .find(|c| c.params_der() == der)
    }
}

/// DER of id-Ed25519 (1.3.101.112): `CKA_EC_PARAMS` of an Edwards key and its SPKI algorithm.
pub const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];

/// SubjectPublicKeyInfo DER of an Ed25519 public key (RFC 8410).
pub fn ed25519_spki(point: &[u8]) -> Vec<u8> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    tlv(0x30, &[tlv(0x30, ED25519_OID), tlv(0x03, &bits)].concat())
}

/// PKCS#8 (RFC 8410) DER of an Ed25519 private key (for data key pairs only).
pub fn ed25519_pkcs8(seed: &[u8]) -> Vec<u8> {
    tlv(
        0x30,
        &[
            tlv(0x02, &[0]),
            tlv(0x30, ED25519_OID),
            tlv(0x04, &tlv(0x04, seed)),
        ]
        .concat(),
    )
}

/// `CKA_EC_POINT` of an Edwards key (DER OCTET STRING or raw) → the 32-byte public key.
pub fn ed25519_point_raw(attr: &[u8]) -> Option<Vec<u8>> {
    if let Some((0x04, inner, [])) = read_tlv(attr) {
        if inner.len() == 32 {
            return Some(inner.to_vec());
        }
    }
    (attr.len() == 32).then(|| attr.to_vec())
}

/// DER of id-ecPublicKey (1.2.840.10045.2.1).
const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];

/// One DER TLV.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= 0xFF {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// Read one DER TLV: (tag, content, rest).
pub fn read_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (l0 as usize, rest)
    } else {
        let k = (l0 & 0x7F) as usize;
        if k == 0 || k > 2 || rest.len() < k {
            return None;
        }
        let mut n = 0usize;
        for &x in &rest[..k] {
            n = (n << 8) | x as usize;
        }
        if n < 0x80 || (k == 2 && n <= 0xFF) {
            return None; // not minimal
        }
        (n, &rest[k..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `CKA_EC_POINT` as tokens return it (a DER OCTET STRING around the point; some tokens
/// give the raw point) → the raw uncompressed point of `curve`.
pub fn ec_point_raw(curve: Curve, attr: &[u8]) -> Option<Vec<u8>> {
    let want = curve.point_len();
    if let Some((0x04, inner, [])) = read_tlv(attr) {
        if inner.len() == want && inner[0] == 0x04 {
            return Some(inner.to_vec());
        }
    }
    (attr.len() == want && attr[0] == 0x04).then(|| attr.to_vec())
}

/// SubjectPublicKeyInfo DER of an EC public key.
pub fn ec_spki(curve: Curve, point: &[u8]) -> Vec<u8> {
    let alg = tlv(0x30, &[EC_PUBLIC_KEY_OID, curve.params_der()].concat());
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    tlv(0x30, &[alg, tlv(0x03, &bits)].concat())
}

/// Parse an EC SubjectPublicKeyInfo: (curve, raw uncompressed point). `None` for anything
/// else (other algorithms, compressed points, trailing data).
pub fn parse_ec_spki(der: &[u8]) -> Option<(Curve, Vec<u8>)> {
    let (0x30, body, []) = read_tlv(der)? else {
        return None;
    };
    let (0x30, alg, rest) = read_tlv(body)? else {
        return None;
    };
    let (0x03, bits, []) = read_tlv(rest)? else {
        return None;
    };
    let (0x06, oid, params) = read_tlv(alg)? else {
        return None;
    };
    if tlv(0x06, oid) != EC_PUBLIC_KEY_OID {
        return None;
    }
    let curve = Curve::from_params_der(params)?;
    let (&0, point) = bits.split_first()? else {
        return None;
    };
    (point.len() == curve.point_len() && point[0] == 0x04).then(|| (curve, point.to_vec()))
}

/// PKCS#8 (RFC 5958) DER of an EC private key (for data key pairs only).
pub fn ec_pkcs8(curve: Curve, scalar: &[u8], point: &[u8]) -> Vec<u8> {
    let n = curve.field_len();
    let mut d = vec![0u8; n.saturating_sub(scalar.len())];
    d.extend_from_slice(&scalar[scalar.len().saturating_sub(n)..]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    let ec_private_key = tlv(
        0x30,
        &[tlv(0x02, &[1]), tlv(0x04, &d), tlv(0xA1, &tlv(0x03, &bits))].concat(),
    );
    let alg = tlv(0x30, &[EC_PUBLIC_KEY_OID, curve.params_der()].concat());
    tlv(
        0x30,
        &[tlv(0x02, &[0]), alg, tlv(0x04, &ec_private_key)].concat(),
    )
}

fn der_uint(v: &[u8]) -> Vec<u8> {
    let mut v = v;
    while v.len() > 1 && v[0] == 0 {
        v = &v[1..];
    }
    let mut c = Vec::with_capacity(v.len() + 1);
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        c.push(0);
    }
    c.extend_from_slice(v);
    tlv(0x02, &c)
}

/// PKCS#11 ECDSA signature `r ‖ s` → DER `ECDSA-Sig-Value`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Vec<u8> {
    let (r, s) = raw.split_at(raw.len() / 2);
    tlv(0x30, &[der_uint(r), der_uint(s)].concat())
}

/// DER `ECDSA-Sig-Value` → `r ‖ s` with each half `n` bytes; `None` if malformed or out
/// of range (such a signature is simply invalid).
pub fn ecdsa_der_to_raw(der: &[u8], n: usize) -> Option<Vec<u8>> {
    let (0x30, body, []) = read_tlv(der)? else {
        return None;
    };
    let (0x02, r, rest) = read_tlv(body)? else {
        return None;
    };
    let (0x02, s, []) = read_tlv(rest)? else {
        return None;
    };
    let mut out = Vec::with_capacity(2 * n);
    for x in [r, s] {
        if x.is_empty() || x[0] & 0x80 != 0 || (x.len() > 1 && x[0] == 0 && x[1] & 0x80 == 0) {
            return None; // negative or non-minimal
        }
        let x = if x[0] == 0 { &x[1..] } else { x };
        if x.len() > n {
            return None;
        }
        out.extend(std::iter::repeat_n(0u8, n - x.len()));
        out.extend_from_slice(x);
    }
    Some(out)
}

/// Hash functions of the signing, MAC and OAEP algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    pub fn is_empty(self) -> bool {
        false
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha224 => sha2::Sha224::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// The DER DigestInfo prefix of PKCS#1 v1.5 signatures (RFC 8017 §9.2 note 1).
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha1 => &[
                0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
                0x14,
            ],
            Hash::Sha224 => &[
                0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x04, 0x05, 0x00, 0x04, 0x1c,
            ],
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.len());
    let mut counter = 0u32;
    while out.len() < len {
        out.extend(hash.digest(&[seed, &counter.to_be_bytes()].concat()));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// EME-OAEP decoding (RFC 8017 §7.1.2 step 3) of `em`, the `k`-byte result of the raw RSA
/// private-key operation done in the token, with an empty label. Checks are combined so
/// that every failure looks the same.
pub fn oaep_decode(hash: Hash, em: &[u8], k: usize) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let h = hash.len();
    if k < 2 * h + 2 || em.len() > k {
        return None;
    }
    let mut block = zeroize::Zeroizing::new(vec![0u8; k - em.len()]);
    block.extend_from_slice(em);
    let (y, rest) = block.split_at(1);
    let (masked_seed, masked_db) = rest.split_at(h);
    let seed_mask = mgf1(hash, masked_db, h);
    let seed: Vec<u8> = masked_seed
        .iter()
        .zip(&seed_mask)
        .map(|(a, b)| a ^ b)
        .collect();
    let db_mask = mgf1(hash, &seed, k - h - 1);
    let db: zeroize::Zeroizing<Vec<u8>> =
        zeroize::Zeroizing::new(masked_db.iter().zip(&db_mask).map(|(a, b)| a ^ b).collect());
    let lhash = hash.digest(b"");
    let mut good = db[..h].ct_eq(&lhash) & y[0].ct_eq(&0);
    // Find the 0x01 separator after the zero padding without branching on secret bytes.
    let mut found = subtle::Choice::from(0);
    let mut index = 0u32;
    for (i, &b) in db[h..].iter().enumerate() {
        let is_one = b.ct_eq(&1);
        let is_zero = b.ct_eq(&0);
        let first = is_one & !found;
        index = subtle::ConditionallySelectable::conditional_select(&index, &(i as u32), first);
        found |= is_one;
        good &= found | is_zero;
    }
    good &= found;
    if bool::from(good) {
        Some(zeroize::Zeroizing::new(
            db[h + index as usize + 1..].to_vec(),
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_round_trip() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero in DER
        raw[40] = 0x01; // s has leading zeros to strip
        let der = ecdsa_raw_to_der(&raw);
        assert_eq!(ecdsa_der_to_raw(&der, 32).unwrap(), raw);
        assert!(ecdsa_der_to_raw(&der[..der.len() - 1], 32).is_none());
        assert!(ecdsa_der_to_raw(&der, 16).is_none());
    }

    #[test]
    fn spki_round_trip_and_point_forms() {
        let mut point = vec![4u8];
        point.extend([7u8; 132]);
        let spki = ec_spki(Curve::P521, &point);
        assert_eq!(parse_ec_spki(&spki), Some((Curve::P521, point.clone())));
        assert_eq!(
            ec_point_raw(Curve::P521, &tlv(0x04, &point)).unwrap(),
            point
        );
        assert_eq!(ec_point_raw(Curve::P521, &point).unwrap(), point);
        assert!(parse_ec_spki(&[spki.clone(), vec![0]].concat()).is_none());
    }

    #[test]
    fn oaep_decodes_what_rsa_crate_encodes() {
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        use rsa::BigUint;
        let mut rng = rand::thread_rng();
        let sk = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let pk = sk.to_public_key();
        let msg = b"attack at dawn";
        let ct = pk
            .encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), msg)
            .unwrap();
        // Raw RSA (what CKM_RSA_X_509 does in the token), here in software for the test.
        let m = BigUint::from_bytes_be(&ct).modpow(sk.d(), sk.n());
        let k = pk.size();
        let em = m.to_bytes_be();
        assert_eq!(oaep_decode(Hash::Sha256, &em, k).unwrap().as_slice(), msg);
        let mut bad = em.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(oaep_decode(Hash::Sha256, &bad, k).is_none());
        assert!(oaep_decode(Hash::Sha1, &em, k).is_none());
    }
}
