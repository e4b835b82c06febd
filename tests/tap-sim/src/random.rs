//! Deterministic randomness: every random stream is derived from the seed
//! plus the coordinates of what it generates (e.g. kind and minute bucket),
//! so any part of the event history can be regenerated on its own.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// SplitMix64 finaliser: spreads nearby inputs over the whole range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the stream identified by `parts`.
pub fn derive_seed(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x5EED_u64, |acc, &part| mix(acc ^ mix(part)))
}

pub fn rng_for(parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(parts))
}

/// A stable 64-bit value for a string (used to seed per-threat details).
pub fn hash_str(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

pub fn hex_string(rng: &mut impl Rng, len: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    (0..len)
        .map(|_| HEX[rng.gen_range(0..16)] as char)
        .collect()
}

pub fn alnum_string(rng: &mut impl Rng, len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// A random version-4 UUID in its usual text form.
pub fn uuid(rng: &mut impl Rng) -> String {
    let bytes: [u8; 16] = rng.gen();
    uuid_from_bytes(bytes)
}

/// A UUID-looking id that is a pure function of `name`.
pub fn uuid_for_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    uuid_from_bytes(digest[..16].try_into().expect("16 bytes"))
}

fn uuid_from_bytes(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Picks one item with probability proportional to its weight.
pub fn weighted<'a, T>(rng: &mut impl Rng, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut roll = rng.gen_range(0..total);
    for (item, weight) in items {
        if roll < *weight {
            return item;
        }
        roll -= weight;
    }
    &items[items.len() - 1].0
}

pub fn pick<'a, T>(rng: &mut impl Rng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_on_every_part_and_its_position() {
        assert_eq!(derive_seed(&[1, 2, 3]), derive_seed(&[1, 2, 3]));
        assert_ne!(derive_seed(&[1, 2, 3]), derive_seed(&[1, 2, 4]));
        assert_ne!(derive_seed(&[1, 2, 3]), derive_seed(&[3, 2, 1]));
        assert_ne!(derive_seed(&[0]), derive_seed(&[0, 0]));
    }

    #[test]
    fn uuid_shape() {
        let id = uuid(&mut rng_for(&[7]));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(uuid_for_name("x"), uuid_for_name("x"));
    }
}
