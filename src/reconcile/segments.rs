//! Splitting a Stripe list into `created` segments read side by side
//! (pure: no IO, no clock).
//!
//! Stripe lists newest first and filters by `created`, so a list can be
//! read as several disjoint `created` ranges at once. Nothing tells how
//! many objects a range holds before reading it, so the split is adaptive:
//! every segment starts as one request; when its first page says the
//! segment is much longer than a page (its 100 objects span a small part of
//! the segment's time), the rest of it is split in more segments, each
//! again a request. A small list costs what a serial read costs (one page,
//! no split); a large one fans out until every reader has work.
//!
//! Choices:
//! - the rest of a segment after a page is its *continuation* (same lower
//!   bound, upper bound the page's oldest `created` + 1 s, and the page's
//!   last id as `starting_after`), so objects sharing the oldest second are
//!   read once, in Stripe's own order; the split boundaries lie strictly
//!   below that second (`every_object_is_read_exactly_once`);
//! - the lowest segment keeps the segment's lower bound, open when the
//!   list's was: the floor (the oldest price) only guides the estimate, so
//!   an object older than it is still read (`objects_older_than_the_floor_are_read`);
//! - a segment is split when its estimated rest exceeds [`SPLIT_ABOVE`]
//!   pages, into segments of about [`Split::pages_per_segment`] estimated
//!   pages, at most [`MAX_SPLIT`] at a time and no more than the reader has
//!   room for (`split_table`). Every segment ends on a partial page (or an
//!   empty one, where the estimate was wrong), so a segment costs a request
//!   and is only worth it where it shortens the read: no more segments than
//!   readers, and none shorter than the longest list's segments (the run
//!   lasts as long as that list; a short list read in fewer, longer
//!   segments ends no later). A long segment is split again at a later page
//!   once readers fall idle.

use crate::stripe::{CreatedRange, Span};
use chrono::DateTime;

/// Stripe's page size.
pub const PAGE: usize = 100;
/// A rest estimated at more pages than this is split.
pub const SPLIT_ABOVE: u64 = 3;
/// Estimated pages a new segment holds at least.
pub const PAGES_PER_SEGMENT: u64 = 4;
/// New segments per split.
pub const MAX_SPLIT: u64 = 16;
/// The floor when the one given is no use (at or above the page's oldest
/// object: purchases older than every price): Stripe's launch, 2011-01-01.
pub const STRIPE_EPOCH: i64 = 1_293_840_000;

/// How far a segment may be split after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Segments the reader can start now beside the continuation.
    pub room: usize,
    /// Estimated pages each new segment should hold (at least
    /// [`PAGES_PER_SEGMENT`]).
    pub pages_per_segment: u64,
}

impl Split {
    /// No split: the segment continues serially.
    pub const NONE: Split = Split {
        room: 0,
        pages_per_segment: PAGES_PER_SEGMENT,
    };
}

/// A part of a list: objects with `gte <= created < lt` (unix seconds,
/// open when unset), listed after `after` when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub after: Option<String>,
}

impl Segment {
    pub fn of(range: &CreatedRange) -> Segment {
        Segment {
            gte: range.gte.map(|t| t.timestamp()),
            lt: range.lt.map(|t| t.timestamp()),
            after: None,
        }
    }

    /// The `created` filter of the request for this segment.
    pub fn range(&self) -> CreatedRange {
        CreatedRange {
            gte: self.gte.and_then(|s| DateTime::from_timestamp(s, 0)),
            lt: self.lt.and_then(|s| DateTime::from_timestamp(s, 0)),
        }
    }
}

/// Estimated pages left below a page that listed `span.listed` objects
/// between `span.newest` and `span.oldest`, down to `floor`.
pub fn pages_left(span: &Span, floor: Option<i64>) -> u64 {
    let (Some(newest), Some(oldest), Some(floor)) = (span.newest, span.oldest, floor) else {
        return 0;
    };
    if oldest <= floor || span.listed == 0 {
        return 0;
    }
    let covered = (newest - oldest).max(1) as f64;
    let per_second = span.listed as f64 / covered;
    let objects = per_second * (oldest - floor) as f64;
    (objects / PAGE as f64).ceil() as u64
}

/// The lower end of `segment` for the estimate: its own bound, else the
/// floor when it is below the page's oldest object, else [`STRIPE_EPOCH`]
/// (unless the page lies within one second); `None` without a floor.
pub fn lower_bound(segment: &Segment, floor: Option<i64>, span: &Span) -> Option<i64> {
    let (Some(newest), Some(oldest)) = (span.newest, span.oldest) else {
        return segment.gte.or(floor);
    };
    segment.gte.or(floor.map(|f| {
        if f < oldest || newest == oldest {
            // A page within one second says nothing of the density below it.
            f
        } else {
            STRIPE_EPOCH.min(oldest - 1)
        }
    }))
}

/// What is left of `segment` to read after a page of it (`span`, and the
/// `next` cursor when Stripe has more): nothing on its last page, else its
/// continuation, first, and the new segments the rest was split into.
/// `floor` is the oldest `created` the account can have (the oldest
/// price), a guess used when the segment has no lower bound; when it is
/// not below the page's oldest object, [`STRIPE_EPOCH`] is used instead.
/// Without a floor (`None`) the list is never split.
/// `split` bounds the new segments.
pub fn rest(segment: &Segment, span: &Span, next: Option<&str>, floor: Option<i64>, split: Split) -> Vec<Segment> {
    let (Some(next), Some(oldest)) = (next, span.oldest) else {
        return Vec::new();
    };
    let continuation = |gte: Option<i64>| Segment {
        gte,
        lt: Some(oldest + 1),
        after: Some(next.to_owned()),
    };
    let low = lower_bound(segment, floor, span);
    let pages = pages_left(span, low);
    let parts = pages
        .div_ceil(split.pages_per_segment.max(PAGES_PER_SEGMENT))
        .min(MAX_SPLIT)
        .min(split.room as u64 + 1);
    let Some(low) = low.filter(|_| pages > SPLIT_ABOVE && parts >= 2) else {
        return vec![continuation(segment.gte)];
    };
    let parts = parts as i64;
    // Boundaries strictly inside (low, oldest): the continuation keeps the
    // page's own second.
    let width = oldest - low;
    let mut bounds: Vec<i64> = (1..parts).map(|i| low + width * i / parts).collect();
    bounds.retain(|b| *b > low && *b < oldest);
    bounds.dedup();
    let Some(&top) = bounds.last() else {
        return vec![continuation(segment.gte)];
    };
    let mut out = vec![continuation(Some(top))];
    let mut upper = top;
    for &b in bounds.iter().rev().skip(1) {
        out.push(Segment {
            gte: Some(b),
            lt: Some(upper),
            after: None,
        });
        upper = b;
    }
    out.push(Segment {
        gte: segment.gte,
        lt: Some(upper),
        after: None,
    });
    out
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table rows
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Room for every split the estimate asks for, in segments of the
    /// least pages.
    const ROOMY: Split = Split {
        room: MAX_SPLIT as usize,
        pages_per_segment: PAGES_PER_SEGMENT,
    };

    fn room(room: usize) -> Split {
        Split { room, ..ROOMY }
    }

    fn span(newest: i64, oldest: i64, listed: usize) -> Span {
        Span {
            newest: Some(newest),
            oldest: Some(oldest),
            listed,
        }
    }

    fn seg(gte: Option<i64>, lt: Option<i64>, after: Option<&str>) -> Segment {
        Segment {
            gte,
            lt,
            after: after.map(str::to_owned),
        }
    }

    #[test]
    fn split_table() {
        let whole = Segment::default();
        // (case, segment, span, next, floor, expected)
        let cases: Vec<(&str, Segment, Span, Option<&str>, Option<i64>, Vec<Segment>)> = vec![
            (
                "last page: nothing left",
                whole.clone(),
                span(1000, 900, 40),
                None,
                Some(0),
                vec![],
            ),
            (
                "empty page: nothing left",
                whole.clone(),
                Span::default(),
                Some("x"),
                Some(0),
                vec![],
            ),
            (
                "rest of about one page: continue serially",
                whole.clone(),
                span(1000, 900, 100),
                Some("o_9"),
                Some(800),
                vec![seg(None, Some(901), Some("o_9"))],
            ),
            (
                "no floor and no lower bound: continue serially",
                whole.clone(),
                span(1000, 900, 100),
                Some("o_9"),
                None,
                vec![seg(None, Some(901), Some("o_9"))],
            ),
            (
                // 100 objects in 100 s, 800 s left: ~8 pages, 2 segments.
                "a long rest is split below the page's oldest second",
                whole.clone(),
                span(1000, 900, 100),
                Some("o_9"),
                Some(100),
                vec![seg(Some(500), Some(901), Some("o_9")), seg(None, Some(500), None)],
            ),
            (
                // ~80 pages: 16 segments at most... 20 wanted, 16 made.
                "a very long rest makes at most MAX_SPLIT segments",
                seg(Some(0), Some(1001), None),
                span(1000, 990, 100),
                Some("o_9"),
                None,
                {
                    let mut v = vec![seg(Some(928), Some(991), Some("o_9"))];
                    let b: Vec<i64> = (1..16).map(|i| 990 * i / 16).collect();
                    for i in (0..14).rev() {
                        v.push(seg(Some(b[i]), Some(b[i + 1]), None));
                    }
                    v.push(seg(Some(0), Some(b[0]), None));
                    v
                },
            ),
            (
                // Prices younger than the purchases: the estimate reaches
                // back to Stripe's launch instead of giving up.
                "a floor above the page falls back to Stripe's launch",
                whole.clone(),
                span(STRIPE_EPOCH + 1000, STRIPE_EPOCH + 900, 100),
                Some("o_9"),
                Some(STRIPE_EPOCH + 5_000),
                // 900 s below the page at 1 object/s: 9 pages, 3 segments.
                vec![
                    seg(Some(STRIPE_EPOCH + 600), Some(STRIPE_EPOCH + 901), Some("o_9")),
                    seg(Some(STRIPE_EPOCH + 300), Some(STRIPE_EPOCH + 600), None),
                    seg(None, Some(STRIPE_EPOCH + 300), None),
                ],
            ),
            (
                "a floor at a page within one second: continue serially",
                whole.clone(),
                span(STRIPE_EPOCH + 900, STRIPE_EPOCH + 900, 100),
                Some("o_9"),
                Some(STRIPE_EPOCH + 900),
                vec![seg(None, Some(STRIPE_EPOCH + 901), Some("o_9"))],
            ),
            (
                "a dense second cannot be split: continue serially",
                seg(Some(900), None, None),
                span(901, 901, 100),
                Some("o_9"),
                None,
                vec![seg(Some(900), Some(902), Some("o_9"))],
            ),
        ];
        for (case, segment, span, next, floor, expected) in cases {
            assert_eq!(rest(&segment, &span, next, floor, ROOMY), expected, "{case}");
        }
    }

    #[test]
    fn pages_left_estimates_from_the_page_density() {
        assert_eq!(pages_left(&span(1000, 900, 100), Some(100)), 8);
        assert_eq!(pages_left(&span(1000, 900, 100), Some(950)), 0, "floor above the page");
        assert_eq!(pages_left(&span(1000, 900, 100), None), 0);
        assert_eq!(pages_left(&span(900, 900, 100), Some(0)), 900, "one second of 100");
    }

    /// Stripe's list semantics over `(created, id)` pairs: newest first
    /// (ties by id, descending), `created` filter, `starting_after` by
    /// position.
    fn list(objects: &[(i64, u32)], s: &Segment, limit: usize) -> (Vec<(i64, u32)>, bool) {
        let mut sorted: Vec<(i64, u32)> = objects.to_vec();
        sorted.sort_by(|a, b| b.cmp(a));
        let start = match &s.after {
            Some(after) => {
                let id: u32 = after.parse().unwrap();
                sorted
                    .iter()
                    .position(|o| o.1 == id)
                    .map(|p| p + 1)
                    .unwrap_or(sorted.len())
            }
            None => 0,
        };
        let matching: Vec<(i64, u32)> = sorted[start..]
            .iter()
            .filter(|(c, _)| s.gte.is_none_or(|g| *c >= g) && s.lt.is_none_or(|l| *c < l))
            .copied()
            .collect();
        let has_more = matching.len() > limit;
        (matching.into_iter().take(limit).collect(), has_more)
    }

    /// Reads a whole model list the way the engine does and returns every
    /// object read, in reading order.
    fn read_all(
        objects: &[(i64, u32)],
        whole: Segment,
        floor: Option<i64>,
        limit: usize,
        split: Split,
    ) -> Vec<(i64, u32)> {
        let mut pending = vec![whole];
        let mut read = Vec::new();
        let mut requests = 0;
        while let Some(s) = pending.pop() {
            requests += 1;
            assert!(requests < 100_000, "the split must terminate");
            let (page, has_more) = list(objects, &s, limit);
            let span = Span {
                newest: page.first().map(|o| o.0),
                oldest: page.last().map(|o| o.0),
                listed: page.len(),
            };
            let next = has_more.then(|| page.last().unwrap().1.to_string());
            read.extend(page);
            pending.extend(rest(&s, &span, next.as_deref(), floor, split));
        }
        read
    }

    proptest! {
        #![proptest_config(crate::tests::proptest_config(128))]

        #[test]
        fn every_object_is_read_exactly_once(
            created in prop::collection::vec(0i64..5_000, 0..1_500),
            burst in prop::collection::vec(4_000i64..4_010, 0..400),
            floor in prop::option::of(0i64..6_000),
            limit in prop_oneof![Just(100usize), 1usize..20],
            split in prop_oneof![
                Just(ROOMY),
                (0usize..12, 1u64..40).prop_map(|(room, pages_per_segment)| Split { room, pages_per_segment }),
            ],
        ) {
            let objects: Vec<(i64, u32)> = created
                .iter()
                .chain(&burst)
                .enumerate()
                .map(|(i, c)| (*c, i as u32))
                .collect();
            let mut read = read_all(&objects, Segment::default(), floor, limit, split);
            read.sort();
            let mut expected = objects.clone();
            expected.sort();
            prop_assert_eq!(read, expected);
        }
    }

    #[test]
    fn objects_older_than_the_floor_are_read() {
        // Floor at 5,000 (the oldest price) but purchases long before it.
        let objects: Vec<(i64, u32)> = (0..2_000).map(|i| (i * 3, i as u32)).collect();
        let read = read_all(&objects, Segment::default(), Some(5_000), 100, ROOMY);
        assert_eq!(read.len(), 2_000);
    }

    #[test]
    fn a_windowed_list_stays_in_its_window() {
        let objects: Vec<(i64, u32)> = (0..3_000).map(|i| (i, i as u32)).collect();
        let read = read_all(&objects, seg(Some(1_000), Some(2_500), None), Some(0), 100, ROOMY);
        assert_eq!(read.len(), 1_500);
        assert!(read.iter().all(|(c, _)| (1_000..2_500).contains(c)));
    }

    #[test]
    fn a_large_even_list_fans_out_and_a_small_one_does_not() {
        let objects: Vec<(i64, u32)> = (0..10_000).map(|i| (i, i as u32)).collect();
        let after_first = rest(
            &Segment::default(),
            &span(9_999, 9_900, 100),
            Some("9900"),
            Some(0),
            ROOMY,
        );
        assert_eq!(after_first.len(), MAX_SPLIT as usize, "{after_first:?}");
        let first = |split| {
            rest(
                &Segment::default(),
                &span(9_999, 9_900, 100),
                Some("9900"),
                Some(0),
                split,
            )
        };
        assert_eq!(first(room(0)).len(), 1, "no room: continue serially, split later");
        assert_eq!(first(Split::NONE).len(), 1);
        assert_eq!(
            first(room(3)).len(),
            4,
            "the continuation and one segment per free reader"
        );
        let long = |pages_per_segment| Split {
            room: 9,
            pages_per_segment,
        };
        assert_eq!(first(long(25)).len(), 4, "99 pages left in segments of 25");
        assert_eq!(first(long(60)).len(), 2);
        assert_eq!(first(long(200)).len(), 1, "shorter than one segment: read serially");
        let small: Vec<(i64, u32)> = (0..150).map(|i| (i, i as u32)).collect();
        let (page, _) = list(&small, &Segment::default(), 100);
        let after_small = rest(
            &Segment::default(),
            &span(page[0].0, page[99].0, 100),
            Some("50"),
            Some(0),
            ROOMY,
        );
        assert_eq!(after_small.len(), 1, "a rest of one page is read serially");
        let _ = objects;
    }
}
