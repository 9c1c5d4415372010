//! A capped count of connections, each holding a [`Slot`] that gives its place back when
//! dropped: what bounds a listener's handshakes, sessions or requests in progress.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Slots {
    taken: AtomicUsize,
    cap: usize,
}

/// One place of [`Slots`], given back when dropped.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicUsize);

impl Slots {
    pub fn new(cap: usize) -> Slots {
        Slots {
            taken: AtomicUsize::new(0),
            cap,
        }
    }

    /// A place, unless all `cap` are taken.
    pub fn take(&self) -> Option<Slot<'_>> {
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(&self.taken))
    }

    /// A place even over the cap: for one whose room is being made (an older connection closed,
    /// which gives its place back in a moment).
    pub fn take_anyway(&self) -> Slot<'_> {
        self.taken.fetch_add(1, Ordering::SeqCst);
        Slot(&self.taken)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_and_given_back() {
        let slots = Slots::new(2);
        let a = slots.take().unwrap();
        let b = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(a);
        let c = slots.take().unwrap();
        let over = slots.take_anyway();
        assert!(slots.take().is_none());
        drop((b, c, over));
        assert_eq!(slots.taken.load(Ordering::SeqCst), 0);
    }
}
