//! The list streams of a generated account: which purchases' objects a list
//! holds, at what time and id, walked in list order between two bounds
//! without building anything.

use super::{Generated, ID_BASE, Kind, MONTH, Part, STRIDE, YEAR};

/// Where the elements of a list come from; each yields elements in `(created, id)` order.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    Customers,
    Subscriptions,
    Sessions,
    OneOffInvoices,
    /// The invoices of period `m` of the subscriptions billed every `period` seconds.
    SubscriptionInvoices {
        period: i64,
        m: i64,
    },
    InvoiceItems,
}

/// One list element: a purchase's object, ordered by `(time, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Elem {
    pub(super) time: i64,
    pub(super) seq: u64,
    pub(super) i: u64,
    /// What of the purchase must be built to serve it.
    pub(super) part: Part,
}

impl Generated {
    pub(super) fn sources(&self, ty: &str) -> Vec<Source> {
        match ty {
            "customer" => vec![Source::Customers],
            "subscription" => vec![Source::Subscriptions],
            "checkout.session" => vec![Source::Sessions],
            "invoiceitem" => vec![Source::InvoiceItems],
            "invoice" => {
                let mut sources = vec![Source::OneOffInvoices];
                let age = (self.n as i64 - 1) * self.step;
                for period in [MONTH, YEAR] {
                    for m in 0..=age / period {
                        sources.push(Source::SubscriptionInvoices { period, m });
                    }
                }
                sources
            }
            _ => vec![],
        }
    }

    pub(super) fn member(&self, src: Source, i: u64) -> bool {
        let kind = self.kind(i);
        match src {
            Source::Customers => kind != Kind::Session || !self.guest(i),
            Source::Subscriptions => kind == Kind::Subscription,
            Source::Sessions => kind == Kind::Session,
            Source::OneOffInvoices | Source::InvoiceItems => kind == Kind::Invoice,
            Source::SubscriptionInvoices { period, m } => {
                kind == Kind::Subscription && self.period(i) == period && self.past(i) >= m
            }
        }
    }

    /// The time of a source's elements of purchase `i`, less `created(i)`.
    pub(super) fn offset(src: Source) -> i64 {
        match src {
            Source::SubscriptionInvoices { period, m } => m * period,
            _ => 0,
        }
    }

    /// The ids (counter values) of a member's elements, ascending.
    pub(super) fn seqs(&self, src: Source, i: u64) -> Vec<u64> {
        let base = ID_BASE + i * STRIDE;
        match src {
            Source::Customers => vec![base + 1],
            Source::Subscriptions => vec![base + 2],
            Source::Sessions => vec![base + if self.guest(i) { 1 } else { 2 }],
            Source::OneOffInvoices => vec![base + 2],
            // customer, subscription, items, then per period: invoice, lines, payment intent, charge.
            Source::SubscriptionInvoices { m, .. } => {
                let n = self.items(i);
                vec![base + 3 + n + m as u64 * (n + 3)]
            }
            Source::InvoiceItems => (0..self.lines(i)).map(|j| base + 3 + j).collect(),
        }
    }

    /// The largest `i` whose time (`created(i) + off`) is at most `t`.
    fn last_at_or_before(&self, t: i64, off: i64) -> Option<u64> {
        let d = i128::from(self.now) + i128::from(off) - i128::from(t);
        let back = if d <= 0 {
            0
        } else {
            (d + i128::from(self.step) - 1) / i128::from(self.step)
        };
        let last = i128::from(self.n) - 1 - back;
        (last >= 0).then_some(last as u64)
    }

    /// The smallest `i` whose time is at least `t`.
    fn first_at_or_after(&self, t: i64, off: i64) -> Option<u64> {
        let d = i128::from(self.now) + i128::from(off) - i128::from(t);
        if d < 0 {
            return None;
        }
        let back = (d / i128::from(self.step)).min(i128::from(self.n) - 1);
        Some((i128::from(self.n) - 1 - back) as u64)
    }
}

/// The elements of one source between two bounds, in list order (newest
/// first, or oldest first when paging back), produced one purchase at a time.
pub(super) struct Walk<'a> {
    g: &'a Generated,
    src: Source,
    /// Newest first.
    desc: bool,
    /// The next index to look at, and the last one that can qualify.
    next: Option<u64>,
    end: u64,
    /// Exclusive bound on `(time, seq)`: below it newest first, above it oldest first.
    bound: (i64, u64),
    /// Elements of the current purchase still to yield, last first.
    pending: Vec<Elem>,
}

impl<'a> Walk<'a> {
    /// Newest first from below `upper` down to time `lo`, or (`desc` false)
    /// oldest first from above `lower` up to time `hi`.
    pub(super) fn new(g: &'a Generated, src: Source, desc: bool, bound: (i64, u64), limit_time: i64) -> Walk<'a> {
        let off = Generated::offset(src);
        let (next, end) = if desc {
            (g.last_at_or_before(bound.0, off), g.first_at_or_after(limit_time, off))
        } else {
            (g.first_at_or_after(bound.0, off), g.last_at_or_before(limit_time, off))
        };
        let (next, end) = match (next, end) {
            (Some(next), Some(end)) if (desc && next >= end) || (!desc && next <= end) => (Some(next), end),
            _ => (None, 0),
        };
        Walk {
            g,
            src,
            desc,
            next,
            end,
            bound,
            pending: Vec::new(),
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = Elem;

    fn next(&mut self) -> Option<Elem> {
        loop {
            if let Some(e) = self.pending.pop() {
                return Some(e);
            }
            let i = self.next?;
            self.next = if i == self.end {
                None
            } else if self.desc {
                Some(i - 1)
            } else {
                Some(i + 1)
            };
            if !self.g.member(self.src, i) {
                continue;
            }
            let time = self.g.created(i) + Generated::offset(self.src);
            let (bound, desc) = (self.bound, self.desc);
            let part = match self.src {
                Source::SubscriptionInvoices { m, .. } => Part::PastInvoice(m),
                Source::Customers => Part::Customer,
                _ => Part::Purchase,
            };
            let mut elems: Vec<Elem> = self
                .g
                .seqs(self.src, i)
                .into_iter()
                .map(|seq| Elem { time, seq, i, part })
                .filter(|e| {
                    if desc {
                        (e.time, e.seq) < bound
                    } else {
                        (e.time, e.seq) > bound
                    }
                })
                .collect();
            // `pending` pops from the end: newest first wants the smallest last.
            if !desc {
                elems.reverse();
            }
            self.pending = elems;
        }
    }
}
