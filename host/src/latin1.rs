//! PEP 3333 native strings: latin-1 text standing for bytes, one char per
//! byte (U+0000..U+00FF), both ways across the WIT boundary.

/// Bytes → native string.
pub fn decode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Native string → bytes; None if a char is above U+00FF.
pub fn encode(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(encode(&decode(&all)).unwrap(), all);
        assert_eq!(encode("a\u{263a}"), None);
    }
}
