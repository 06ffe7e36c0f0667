//! Wildcard matching for actions, resources, ARNs and `StringLike`: `*` matches any run of
//! characters (also none), `?` exactly one. The pattern is compiled into a bit-parallel
//! automaton (one bit per pattern position, 64 per word), so a match costs
//! O(|text| · |pattern| / 64) word operations and never backtracks: a hostile pattern such
//! as `*a*a*a*…b` against `aaaa…` is as cheap as any other.

use std::collections::BTreeMap;

/// One pattern element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok {
    /// A character matched literally.
    Lit(char),
    /// `?`: exactly one character.
    Any,
    /// `*`: any run of characters.
    Star,
}

/// The tokens of a pattern written with `*` and `?` wildcards.
pub(super) fn tokens(pattern: &str) -> Vec<Tok> {
    pattern
        .chars()
        .map(|c| match c {
            '*' => Tok::Star,
            '?' => Tok::Any,
            c => Tok::Lit(c),
        })
        .collect()
}

/// A character for case-insensitive comparison: its lower case when that is one character.
pub(super) fn fold(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(one), None) => one,
        _ => c,
    }
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub(super) struct Glob {
    case_insensitive: bool,
    /// The pattern without wildcards, when it has none (a plain comparison then).
    literal: Option<Vec<char>>,
    /// Number of states: pattern positions 0..=len.
    len: usize,
    star: Vec<u64>,
    any: Vec<u64>,
    /// Where each literal character stands: a mask for characters that occur at least
    /// once per word of state (at most 64 of them), a position list for the others; so
    /// memory stays linear in the pattern and each text character costs O(words).
    dense: BTreeMap<char, Vec<u64>>,
    sparse: BTreeMap<char, Vec<usize>>,
}

fn set(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1u64 << (i % 64);
    }
}

fn get(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

/// `bits << 1` across words.
fn shl1(bits: &mut [u64]) {
    let mut carry = 0u64;
    for w in bits.iter_mut() {
        let next = *w >> 63;
        *w = (*w << 1) | carry;
        carry = next;
    }
}

impl Glob {
    /// Compile `pattern` (with `*` and `?` wildcards).
    pub(super) fn new(pattern: &str, case_insensitive: bool) -> Glob {
        Glob::from_tokens(&tokens(pattern), case_insensitive)
    }

    /// Compile a token sequence (literal `*`/`?` are `Tok::Lit`).
    pub(super) fn from_tokens(toks: &[Tok], case_insensitive: bool) -> Glob {
        // `**` is `*`: collapsing runs keeps the closure below one step long.
        let mut norm: Vec<Tok> = Vec::with_capacity(toks.len());
        for &t in toks {
            if t == Tok::Star && norm.last() == Some(&Tok::Star) {
                continue;
            }
            norm.push(match t {
                Tok::Lit(c) if case_insensitive => Tok::Lit(fold(c)),
                t => t,
            });
        }
        let literal = if norm.iter().all(|t| matches!(t, Tok::Lit(_))) {
            Some(
                norm.iter()
                    .filter_map(|t| match t {
                        Tok::Lit(c) => Some(*c),
                        _ => None,
                    })
                    .collect(),
            )
        } else {
            None
        };
        let len = norm.len();
        let words = len / 64 + 1;
        let mut star = vec![0u64; words];
        let mut any = vec![0u64; words];
        let mut positions: BTreeMap<char, Vec<usize>> = BTreeMap::new();
        if literal.is_none() {
            for (i, t) in norm.iter().enumerate() {
                match t {
                    Tok::Star => set(&mut star, i),
                    Tok::Any => set(&mut any, i),
                    Tok::Lit(c) => positions.entry(*c).or_default().push(i),
                }
            }
        }
        let (mut dense, mut sparse) = (BTreeMap::new(), BTreeMap::new());
        for (c, at) in positions {
            if at.len() >= words {
                let mut mask = vec![0u64; words];
                for i in at {
                    set(&mut mask, i);
                }
                dense.insert(c, mask);
            } else {
                sparse.insert(c, at);
            }
        }
        Glob {
            case_insensitive,
            literal,
            len,
            star,
            any,
            dense,
            sparse,
        }
    }

    fn norm(&self, c: char) -> char {
        if self.case_insensitive {
            fold(c)
        } else {
            c
        }
    }

    /// Whether `text` matches the whole pattern.
    pub(super) fn matches(&self, text: &str) -> bool {
        if let Some(lit) = &self.literal {
            let mut it = lit.iter();
            for c in text.chars() {
                match it.next() {
                    Some(&l) if l == self.norm(c) => {}
                    _ => return false,
                }
            }
            return it.next().is_none();
        }
        let words = self.star.len();
        let mut d = vec![0u64; words];
        set(&mut d, 0);
        self.close(&mut d);
        let mut next = vec![0u64; words];
        let mut consumes = vec![0u64; words];
        for c in text.chars() {
            let c = self.norm(c);
            // The positions whose token consumes `c`...
            consumes.copy_from_slice(&self.any);
            if let Some(mask) = self.dense.get(&c) {
                for (a, m) in consumes.iter_mut().zip(mask) {
                    *a |= m;
                }
            } else if let Some(at) = self.sparse.get(&c) {
                for &i in at {
                    set(&mut consumes, i);
                }
            }
            // ...advance by one...
            for ((n, a), s) in next.iter_mut().zip(&consumes).zip(&d) {
                *n = s & a;
            }
            shl1(&mut next);
            // ...and stars stay where they are.
            for (i, n) in next.iter_mut().enumerate() {
                *n |= d.get(i).copied().unwrap_or(0) & self.star.get(i).copied().unwrap_or(0);
            }
            self.close(&mut next);
            if next.iter().all(|w| *w == 0) {
                return false;
            }
            std::mem::swap(&mut d, &mut next);
        }
        get(&d, self.len)
    }

    /// A star may match nothing: a state on a star also stands after it (one step, as
    /// stars never follow each other).
    fn close(&self, d: &mut [u64]) {
        let mut on_star: Vec<u64> = d.iter().zip(self.star.iter()).map(|(a, b)| a & b).collect();
        shl1(&mut on_star);
        for (w, s) in d.iter_mut().zip(on_star) {
            *w |= s;
        }
    }
}

/// Whether `text` matches `pattern` (`*`, `?`).
pub(super) fn matches(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    simple(pattern, text, case_insensitive)
        .unwrap_or_else(|| Glob::new(pattern, case_insensitive).matches(text))
}

/// Equality of two ASCII-or-exact strings: byte equality, or ASCII case folding.
fn same(a: &str, b: &str, case_insensitive: bool) -> bool {
    if case_insensitive {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// The shapes nearly every policy uses, decided without compiling an automaton or
/// allocating: no wildcard (a comparison), `*` alone, and `prefix*`. `None` for any other
/// shape, and for case-insensitive matching of non-ASCII text (whose folding the automaton
/// does).
fn simple(pattern: &str, text: &str, case_insensitive: bool) -> Option<bool> {
    if case_insensitive && !(pattern.is_ascii() && text.is_ascii()) {
        return None;
    }
    match pattern.find(['*', '?']) {
        None => Some(same(pattern, text, case_insensitive)),
        Some(i) if pattern.get(i..) == Some("*") => {
            let prefix = pattern.get(..i)?;
            Some(
                text.get(..prefix.len())
                    .is_some_and(|head| same(prefix, head, case_insensitive)),
            )
        }
        Some(_) => None,
    }
}

/// [`matches`] for a token sequence (literal `*`/`?` are `Tok::Lit`), case-sensitive: no
/// automaton for a literal, `*` alone, or literals then one `*`.
pub(super) fn tokens_match(toks: &[Tok], text: &str) -> bool {
    let lits = toks.iter().take_while(|t| matches!(t, Tok::Lit(_))).count();
    let rest = toks.get(lits..).unwrap_or_default();
    let prefix = || {
        toks.iter().take(lits).filter_map(|t| match t {
            Tok::Lit(c) => Some(*c),
            _ => None,
        })
    };
    if rest.is_empty() {
        return prefix().eq(text.chars());
    }
    if rest == [Tok::Star] {
        let mut chars = text.chars();
        return prefix().all(|c| chars.next() == Some(c));
    }
    Glob::from_tokens(toks, false).matches(text)
}

/// [`arn_matches`] for a pattern without policy variables (its colons are literal).
pub(super) fn arn_matches_str(pattern: &str, text: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (mut p, mut t) = (pattern.splitn(6, ':'), text.splitn(6, ':'));
    let mut n = 0;
    loop {
        match (p.next(), t.next()) {
            (Some(a), Some(b)) if matches(a, b, false) => n += 1,
            (None, None) => return n == 6,
            _ => return false,
        }
    }
}

/// ARN matching as IAM does it for `Resource` and `ArnLike`: each of the six
/// colon-separated components is matched separately (the last one keeps its colons), so a
/// wildcard never spans a colon of the first five. `*` alone matches anything; a pattern
/// that is not an ARN is matched as a whole.
pub(super) fn arn_matches(pattern: &[Tok], text: &str) -> bool {
    if pattern == [Tok::Star] {
        return true;
    }
    let pat_parts = split_tokens(pattern);
    let text_parts: Vec<&str> = text.splitn(6, ':').collect();
    pat_parts.len() == 6
        && text_parts.len() == 6
        && pat_parts
            .iter()
            .zip(text_parts.iter())
            .all(|(p, t)| tokens_match(p, t))
}

/// A token sequence split like `str::splitn(6, ':')` on literal colons.
fn split_tokens(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut out = Vec::new();
    let mut rest = toks;
    while out.len() < 5 {
        match rest.iter().position(|t| *t == Tok::Lit(':')) {
            Some(i) => {
                out.push(rest.get(..i).unwrap_or(&[]));
                rest = rest.get(i + 1..).unwrap_or(&[]);
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use proptest::prelude::*;

    /// The obvious recursive matcher, exponential but fine on short inputs.
    fn reference(p: &[char], t: &[char], ci: bool) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..], ci)),
            Some(('?', rest)) => !t.is_empty() && reference(rest, &t[1..], ci),
            Some((c, rest)) => match t.split_first() {
                Some((d, trest)) => {
                    let eq = if ci { fold(*c) == fold(*d) } else { c == d };
                    eq && reference(rest, trest, ci)
                }
                None => false,
            },
        }
    }

    #[test]
    fn wildcards() {
        assert!(matches("kms:*", "kms:Encrypt", false));
        assert!(matches("kms:Encrypt*", "kms:Encrypt", false));
        assert!(matches("kms:Encrypt*", "kms:EncryptSomething", false));
        assert!(!matches("kms:Encrypt*", "kms:Decrypt", false));
        assert!(matches("*", "", false));
        assert!(matches("*", "anything", false));
        assert!(matches("kms:?ncrypt", "kms:Encrypt", false));
        assert!(!matches("kms:?ncrypt", "kms:ncrypt", false));
        assert!(matches("KMS:ENCRYPT", "kms:Encrypt", true));
        assert!(!matches("KMS:ENCRYPT", "kms:Encrypt", false));
        assert!(matches("a**b", "ab", false));
        assert!(matches("a*b*c", "aXbYbZc", false));
        assert!(!matches("a*b*c", "aXbYbZ", false));
        assert!(!matches("", "a", false));
        assert!(matches("", "", false));
    }

    #[test]
    fn long_patterns_cross_word_boundaries() {
        let p = format!("{}*{}", "a".repeat(70), "b".repeat(70));
        let t = format!("{}xyz{}", "a".repeat(70), "b".repeat(70));
        assert!(matches(&p, &t, false));
        assert!(!matches(&p, &t[1..], false));
    }

    #[test]
    fn many_distinct_characters() {
        // 4,097 distinct characters, each once: position lists, not masks.
        let t: String = ('\u{4e00}'..='\u{5000}').collect();
        let p = format!("*{t}?");
        assert!(matches(&p, &format!("x{t}y"), false));
        assert!(!matches(&p, &t, false));
    }

    #[test]
    fn hostile_pattern_is_fast() {
        let p = format!("{}b", "*a".repeat(4000));
        let t = "a".repeat(20000);
        let start = std::time::Instant::now();
        assert!(!matches(&p, &t, false));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn arns_match_by_component() {
        let m = |p: &str, t: &str| arn_matches(&tokens(p), t);
        let key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert!(m("*", key));
        assert!(m("arn:aws:kms:*:111122223333:key/*", key));
        assert!(m("arn:aws:kms:us-east-1:111122223333:*", key));
        assert!(!m("arn:aws:kms:*:444455556666:key/*", key));
        assert!(!m("arn:aws:kms:*:111122223333:alias/*", key));
        // A star of one component does not swallow the next colon.
        assert!(!m("arn:aws:*:111122223333:key/*", key));
        assert!(m(
            "arn:aws:iam::111122223333:role/a:b",
            "arn:aws:iam::111122223333:role/a:b"
        ));
        assert!(!m("arn:aws:kms:*", key));
        assert!(!m("arn:aws:kms:us-east-1:111122223333:key/*", "not-an-arn"));
    }

    proptest! {
        #[test]
        fn agrees_with_reference(
            p in "[ab*?]{0,8}",
            t in "[abAB]{0,10}",
            ci in any::<bool>(),
        ) {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(matches(&p, &t, ci), reference(&pc, &tc, ci));
        }

        #[test]
        fn agrees_with_reference_on_any_chars(p in "\\PC{0,6}", t in "\\PC{0,8}") {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char>= t.chars().collect();
            prop_assert_eq!(matches(&p, &t, false), reference(&pc, &tc, false));
        }

        /// The allocation-free shapes (literal, `*`, `prefix*`) decide exactly as the
        /// automaton, case-insensitively too (non-ASCII included: `K` folds to `k`).
        #[test]
        fn fast_paths_agree_with_the_automaton(
            prefix in "[aAkK\u{212a}é:]{0,5}",
            star in any::<bool>(),
            t in "[aAkK\u{212a}é:]{0,7}",
            ci in any::<bool>(),
        ) {
            let p = if star { format!("{prefix}*") } else { prefix.clone() };
            prop_assert_eq!(matches(&p, &t, ci), Glob::new(&p, ci).matches(&t));
            prop_assert_eq!(tokens_match(&tokens(&p), &t), Glob::new(&p, false).matches(&t));
        }

        #[test]
        fn arn_fast_path_agrees(p in "[a:*?]{0,12}", t in "[a:b]{0,12}") {
            prop_assert_eq!(arn_matches_str(&p, &t), arn_matches(&tokens(&p), &t));
        }
    }
}
