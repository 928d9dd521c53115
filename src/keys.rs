//! License keys (licensing-rules §5): 25 characters from a CSPRNG in five
//! groups of five, from an alphabet without look-alikes.

use rand::seq::IndexedRandom;

/// No `0/O` and no `1/I/L`: keys are read aloud and typed from screenshots.
pub const KEY_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`, ~124 bits from the thread's CSPRNG.
pub fn new_license_key() -> String {
    let mut rng = rand::rng();
    let mut key = String::with_capacity(29);
    for group in 0..5 {
        if group > 0 {
            key.push('-');
        }
        for _ in 0..5 {
            key.push(*KEY_ALPHABET.choose(&mut rng).expect("alphabet is not empty") as char);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_five_groups_of_five_without_look_alikes() {
        for _ in 0..200 {
            let key = new_license_key();
            let groups: Vec<&str> = key.split('-').collect();
            assert_eq!(groups.len(), 5, "{key}");
            assert!(groups.iter().all(|g| g.len() == 5), "{key}");
            assert!(!key.chars().any(|c| "0O1IL".contains(c)), "{key}");
            assert!(
                key.chars().all(|c| c == '-' || KEY_ALPHABET.contains(&(c as u8))),
                "{key}"
            );
        }
    }

    #[test]
    fn keys_do_not_repeat() {
        let keys: std::collections::HashSet<String> = (0..10_000).map(|_| new_license_key()).collect();
        assert_eq!(keys.len(), 10_000);
    }
}
