//! What every SMS provider shares: how many segments a message costs.
//!
//! An SMS carries 140 bytes. Text that fits the GSM 03.38 alphabet is packed 7 bits a character:
//! 160 characters in one message, or 153 per segment once it is split (a 6-byte header joins the
//! parts); the extension characters (`^ { } \ [ ~ ] | €` and form feed) take an escape plus the
//! character, two septets. Any other text goes as UCS-2: 70 UTF-16 units, or 67 per segment.
//! Neither an escape pair nor a surrogate pair is split across segments, as handsets and
//! providers do. Providers bill, and rate-limit, per segment: [`SegmentPacer`] holds a sender to
//! its segments per second.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

/// How a message is encoded on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// The cost of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    pub count: u32,
}

/// GSM 03.38 basic characters (one septet each).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// GSM 03.38 extension characters (an escape and the character: two septets).
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{000C}";

/// Septets a character takes in GSM-7, or `None` when it has no GSM-7 form.
fn gsm7_septets(c: char) -> Option<u32> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Segments needed for units of the given sizes, `single` fitting in one message and `part` per
/// segment of a split one; a unit is never split.
fn pack(units: impl Iterator<Item = u32> + Clone, single: u32, part: u32) -> u32 {
    if units.clone().sum::<u32>() <= single {
        return 1;
    }
    let (mut count, mut used) = (1, 0);
    for size in units {
        if used + size > part {
            count += 1;
            used = 0;
        }
        used += size;
    }
    count
}

/// The segments `text` costs.
pub fn segments(text: &str) -> Segments {
    let gsm: Option<Vec<u32>> = text.chars().map(gsm7_septets).collect();
    match gsm {
        Some(septets) => Segments { encoding: Encoding::Gsm7, count: pack(septets.into_iter(), 160, 153) },
        None => {
            let units = text.chars().map(|c| c.len_utf16() as u32);
            Segments { encoding: Encoding::Ucs2, count: pack(units, 70, 67) }
        }
    }
}

/// A sender's pace, in segments per second: carriers and providers meter a number by segments,
/// so a three-segment message waits for three tokens. A token bucket as deep as one second.
#[derive(Debug)]
pub struct SegmentPacer {
    limiter: DefaultDirectRateLimiter,
    burst: NonZeroU32,
}

impl SegmentPacer {
    pub fn new(segments_per_second: NonZeroU32) -> SegmentPacer {
        SegmentPacer {
            limiter: RateLimiter::direct(Quota::per_second(segments_per_second)),
            burst: segments_per_second,
        }
    }

    /// Waits until a message of `cost` ([`segments`]) may go. A message longer than a second's
    /// worth of segments waits for a full bucket rather than forever.
    pub async fn wait(&self, cost: Segments) {
        let tokens = NonZeroU32::new(cost.count).unwrap_or(NonZeroU32::MIN).min(self.burst);
        // Cannot fail: `tokens` is at most the bucket's size.
        let _ = self.limiter.until_n_ready(tokens).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &str) -> (Encoding, u32) {
        let s = segments(text);
        (s.encoding, s.count)
    }

    #[test]
    fn gsm7_fits_160_then_153_per_segment() {
        assert_eq!(count(""), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(307)), (Encoding::Gsm7, 3));
        assert_eq!(count("Your code is 123456. Ça va? Ñoño £5 @home"), (Encoding::Gsm7, 1));
        assert_eq!(count("Ñandú"), (Encoding::Ucs2, 1), "ú is not in GSM-7");
    }

    #[test]
    fn extension_characters_take_two_septets_and_are_not_split() {
        assert_eq!(count(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"€".repeat(81)), (Encoding::Gsm7, 2));
        // 152 septets, then an escape pair that would straddle the boundary: it moves whole.
        let text = format!("{}{}{}", "a".repeat(152), "{", "a".repeat(10));
        assert_eq!(count(&text), (Encoding::Gsm7, 2));
        let text = format!("{}{}", "a".repeat(152), "{".repeat(77));
        assert_eq!(count(&text), (Encoding::Gsm7, 3));
    }

    #[test]
    fn anything_else_is_ucs2_70_then_67() {
        assert_eq!(count("héllo ✓"), (Encoding::Ucs2, 1));
        assert_eq!(count(&"ж".repeat(70)), (Encoding::Ucs2, 1));
        assert_eq!(count(&"ж".repeat(71)), (Encoding::Ucs2, 2));
        assert_eq!(count(&"ж".repeat(134)), (Encoding::Ucs2, 2));
        assert_eq!(count(&"ж".repeat(135)), (Encoding::Ucs2, 3));
        // An emoji is a surrogate pair: 35 of them fill one message, and a pair is never split.
        assert_eq!(count(&"😀".repeat(35)), (Encoding::Ucs2, 1));
        assert_eq!(count(&format!("{}{}", "ж".repeat(66), "😀")), (Encoding::Ucs2, 1));
        assert_eq!(count(&format!("{}{}", "ж".repeat(69), "😀")), (Encoding::Ucs2, 2));
    }

    #[tokio::test]
    async fn the_pacer_counts_segments_not_messages() {
        let pacer = SegmentPacer::new(NonZeroU32::new(4).unwrap());
        let start = std::time::Instant::now();
        // Two two-segment messages use the first second's four tokens; the third waits.
        let two = segments(&"a".repeat(200));
        assert_eq!(two.count, 2);
        pacer.wait(two).await;
        pacer.wait(two).await;
        assert!(start.elapsed() < std::time::Duration::from_millis(200));
        pacer.wait(two).await;
        assert!(start.elapsed() >= std::time::Duration::from_millis(400), "{:?}", start.elapsed());
        // A message bigger than the bucket still goes.
        pacer.wait(segments(&"a".repeat(1000))).await;
    }
}
