//! Kafka's key hash and partitioner, so keys land in the same partition number whichever
//! adapter (embedded or Kafka) stores them.
//!
//! This is a port of `org.apache.kafka.common.utils.Utils.murmur2` and of the Java client's
//! keyed partitioning, `toPositive(murmur2(key)) % partitions`. Changing a single bit of it
//! moves accounts between partitions, so it is pinned by Kafka's own test vectors.

use std::num::NonZeroU32;

/// The seed Kafka's Java client hashes keys with.
const SEED: u32 = 0x9747_b28c;

/// MurmurHash2's multiplication constant.
const M: u32 = 0x5bd1_e995;

/// MurmurHash2's shift.
const R: u32 = 24;

/// Kafka's 32-bit MurmurHash2 of `data`, as the signed integer the Java client computes.
pub fn murmur2(data: &[u8]) -> i32 {
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut h = SEED ^ length;

    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // The Java switch falls through from the highest remaining byte down to the first.
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h.cast_signed()
}

/// Kafka's `Utils.toPositive`: clears the sign bit rather than taking the absolute value, so
/// `i32::MIN` maps to 0 and not to an overflow.
pub fn to_positive(hash: i32) -> u32 {
    (hash & 0x7fff_ffff).cast_unsigned()
}

/// The partition the Kafka Java client's default partitioner picks for a keyed record.
pub fn partition_for_key(key: &[u8], partition_count: NonZeroU32) -> u32 {
    to_positive(murmur2(key)) % partition_count.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's `UtilsTest.testMurmur2` vectors (clients/src/test/java/org/apache/kafka/common/
    /// utils/UtilsTest.java).
    const KAFKA_VECTORS: [(&str, i32); 6] = [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        ("abc", 479_470_107),
    ];

    #[test]
    fn murmur2_matches_the_kafka_java_client_vectors() {
        for (key, expected) in KAFKA_VECTORS {
            assert_eq!(murmur2(key.as_bytes()), expected, "murmur2({key:?})");
        }
    }

    #[test]
    fn to_positive_clears_the_sign_bit_instead_of_negating() {
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn partition_for_key_is_the_positive_hash_modulo_the_partition_count() {
        let count = NonZeroU32::new(16).expect("16 is not zero");
        for (key, hash) in KAFKA_VECTORS {
            let expected = (hash & 0x7fff_ffff).cast_unsigned() % 16;
            assert_eq!(
                partition_for_key(key.as_bytes(), count),
                expected,
                "key {key:?}"
            );
        }
    }

    #[test]
    fn partition_for_key_is_stable_and_in_range() {
        let count = NonZeroU32::new(7).expect("7 is not zero");
        for i in 0..1_000 {
            let key = format!("account-{i}");
            let first = partition_for_key(key.as_bytes(), count);
            assert!(first < 7);
            assert_eq!(partition_for_key(key.as_bytes(), count), first);
        }
    }
}
