//! [`Pooled`]: a box whose memory comes from a per-thread pool of fixed-size blocks.
//!
//! For every request the core creates a future, and for each handler a context and one future
//! per phase; with plain boxes that is an allocation and a free each. Their sizes fall into two
//! classes, so each takes a block of its class from the thread's free list and gives it back
//! when dropped: in steady state no request reaches the allocator for them. A value larger
//! than the largest class (or more aligned) is allocated on its own, as a `Box` would be.
//!
//! A sized value is placed with [`Pooled::new`]; [`Pooled::future`] and [`Pooled::any`] place
//! one and erase its type, for the two kinds the handler API needs.

use std::{
    alloc::{self, Layout},
    any::Any,
    cell::RefCell,
    fmt,
    future::Future,
    marker::PhantomData,
    ops::{Deref, DerefMut},
    pin::Pin,
    ptr::NonNull,
    task::{Context, Poll},
};

/// The block sizes, smallest first: handler contexts and phase futures fit the first; a whole
/// request's future (the core's: 4 KiB for HTTP/1.1, 6.5 KiB for an HTTP/2 stream) the second.
const CLASSES: [usize; 2] = [512, 8 * 1024];
/// Alignment of every pooled block.
const ALIGN: usize = 16;
/// Free blocks kept per thread and class: at least 64, and up to 1024 (512 KiB and 8 MiB) while
/// the load needs them (see [`Spares`]): an HTTP/2 bench keeps 640 streams open at once on one
/// worker, whose blocks would otherwise go back to the allocator and come out of it again on
/// every turn of the load.
const KEEP: (usize, usize) = (64, 1024);

/// Spare values kept for reuse (here, free blocks): at most `max`, and what a busy
/// period needed. A period is [`Spares::PERIOD`] takes; the values that stayed spare through a
/// whole period (the fewest the list held during it) were not needed, and all but `min` of
/// them are dropped when it ends. A burst is so kept while the load lasts and given back as it
/// falls; if no more takes come, what is kept stays (at most `max`) until the thread ends.
struct Spares<T> {
    items: Vec<T>,
    /// Kept whatever the load, and at most.
    min: usize,
    max: usize,
    /// The fewest spare at any moment of this period.
    low: usize,
    /// Takes in this period.
    takes: u32,
}

impl<T> Spares<T> {
    const PERIOD: u32 = 4096;

    const fn new(min: usize, max: usize) -> Spares<T> {
        Spares { items: Vec::new(), min, max, low: 0, takes: 0 }
    }

    /// The most recently given spare, if any (counted: a period ends every `PERIOD` takes).
    fn take(&mut self) -> Option<T> {
        let item = self.items.pop();
        self.low = self.low.min(self.items.len());
        self.takes += 1;
        if self.takes == Self::PERIOD {
            // Not needed all period long: the oldest go.
            let surplus = self.low.min(self.items.len().saturating_sub(self.min));
            self.items.drain(..surplus);
            self.low = self.items.len();
            self.takes = 0;
        }
        item
    }

    /// Keeps `item`, or gives it back when `max` are kept already.
    fn give(&mut self, item: T) -> Option<T> {
        if self.items.len() >= self.max {
            return Some(item);
        }
        self.items.push(item);
        None
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }
}

fn block_layout(class: usize) -> Layout {
    // Constant, valid layouts: each class is a multiple of ALIGN, a power of two.
    Layout::from_size_align(CLASSES[class], ALIGN).expect("a valid block layout")
}

/// The class whose blocks hold `layout`, if any.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() > ALIGN {
        return None;
    }
    CLASSES.iter().position(|&size| layout.size() <= size)
}

/// A free block of a class, owned: freed when dropped.
struct Block {
    raw: NonNull<u8>,
    class: usize,
}

impl Block {
    fn take(class: usize) -> NonNull<u8> {
        let spare = FREE.with(|f| f.borrow_mut()[class].take());
        spare.map_or_else(|| allocate(block_layout(class)), Block::into_raw)
    }

    fn into_raw(self) -> NonNull<u8> {
        let raw = self.raw;
        std::mem::forget(self);
        raw
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: a block is allocated with its class's layout and owned by `self` alone.
        unsafe { alloc::dealloc(self.raw.as_ptr(), block_layout(self.class)) };
    }
}

thread_local! {
    /// The thread's free blocks, by class; freed with the thread.
    static FREE: RefCell<[Spares<Block>; CLASSES.len()]> =
        const { RefCell::new([Spares::new(KEEP.0, KEEP.1), Spares::new(KEEP.0, KEEP.1)]) };
}

/// Where a value's memory came from, and so how to give it back.
#[derive(Clone, Copy)]
enum Storage {
    /// A block of the pool, of this class.
    Block(usize),
    /// An allocation of exactly this layout (too large or too aligned for a block).
    Own(Layout),
    /// Nothing: a zero-sized value.
    None,
}

/// An owned `T` (sized or not) in pooled memory; see the module docs.
pub struct Pooled<T: ?Sized> {
    ptr: NonNull<T>,
    storage: Storage,
    /// Owns a `T`: drop check treats it as such.
    _owns: PhantomData<T>,
}

impl<T> Pooled<T> {
    /// Moves `value` into a block of this thread's pool (or its own allocation if it does not
    /// fit one).
    pub fn new(value: T) -> Pooled<T> {
        Pooled::new_with(|| value)
    }

    /// The value `make` returns, written straight into its block: the block is taken first,
    /// so a large value (a request's future, some KiB) is built where it stays rather than on
    /// the stack and then copied, as passing it to [`new`](Self::new) does.
    #[inline(always)]
    pub fn new_with(make: impl FnOnce() -> T) -> Pooled<T> {
        let layout = Layout::new::<T>();
        let (raw, storage) = if layout.size() == 0 {
            (NonNull::<T>::dangling().cast::<u8>(), Storage::None)
        } else if let Some(class) = class_of(layout) {
            (Block::take(class), Storage::Block(class))
        } else {
            (allocate(layout), Storage::Own(layout))
        };
        let ptr = raw.cast::<T>();
        // Owns the block until the value is in it: a `make` that panics gives it back.
        let empty = Empty { ptr: raw, storage };
        // SAFETY: `ptr` is valid for a write of `T` (sized and aligned for it, or dangling and
        // `T` zero-sized), and holds no value yet. Written as `make` returns it, so that the
        // value can be built in the block itself.
        unsafe { ptr.as_ptr().write(make()) };
        std::mem::forget(empty);
        Pooled { ptr, storage, _owns: PhantomData }
    }
}

impl<'a, O> Pooled<dyn Future<Output = O> + 'a> {
    /// `fut`, pooled (a pooled value never moves, so it is pinned where it is).
    pub fn future(fut: impl Future<Output = O> + 'a) -> Self {
        Pooled::future_with(|| fut)
    }

    /// The future `make` returns, pooled and built in place (see [`Pooled::new_with`]):
    /// `Pooled::future_with(|| handle(req))` costs no copy of `handle`'s state.
    #[inline(always)]
    pub fn future_with<F: Future<Output = O> + 'a>(make: impl FnOnce() -> F) -> Self {
        let (ptr, storage) = Pooled::new_with(make).into_raw();
        Pooled { ptr, storage, _owns: PhantomData }
    }
}

impl Pooled<dyn Any> {
    /// `value`, pooled, with its type erased.
    pub fn any<T: Any>(value: T) -> Self {
        let (ptr, storage) = Pooled::new(value).into_raw();
        Pooled { ptr, storage, _owns: PhantomData }
    }
}

impl<T> Pooled<T> {
    /// The pointer and where its memory came from, without dropping the value: the caller
    /// takes over both (to unsize the pointer).
    fn into_raw(self) -> (NonNull<T>, Storage) {
        let raw = (self.ptr, self.storage);
        std::mem::forget(self);
        raw
    }
}

fn allocate(layout: Layout) -> NonNull<u8> {
    // SAFETY: `layout` has a non-zero size (zero-sized values never get here).
    let p = unsafe { alloc::alloc(layout) };
    NonNull::new(p).unwrap_or_else(|| alloc::handle_alloc_error(layout))
}

impl<T: ?Sized> Drop for Pooled<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` holds a live `T` that this value owns; it is not used again.
        unsafe { self.ptr.as_ptr().drop_in_place() };
        // SAFETY: the memory came from `storage` and holds nothing live any more.
        unsafe { give_back(self.ptr.cast::<u8>(), self.storage) };
    }
}

/// A block taken for a value not yet written into it (see [`Pooled::new_with`]).
struct Empty {
    ptr: NonNull<u8>,
    storage: Storage,
}

impl Drop for Empty {
    fn drop(&mut self) {
        // SAFETY: the block came from `storage` and holds no value.
        unsafe { give_back(self.ptr, self.storage) };
    }
}

/// Returns memory that came from `storage` to the thread's pool (or the allocator).
///
/// # Safety
/// `raw` was obtained for `storage` as [`Pooled::new_with`] does, holds no live value, and is
/// not used again.
unsafe fn give_back(raw: NonNull<u8>, storage: Storage) {
    match storage {
        Storage::None => {}
        // SAFETY: allocated in `new_with` with this very layout, and no longer used.
        Storage::Own(layout) => unsafe { alloc::dealloc(raw.as_ptr(), layout) },
        Storage::Block(class) => {
            // Kept for reuse unless enough are (or the thread is exiting): else freed.
            let block = Block { raw, class };
            let _freed = FREE.try_with(|f| f.borrow_mut()[class].give(block));
        }
    }
}

impl<T: ?Sized> Deref for Pooled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a live `T` owned by `self`, borrowed for as long as `self` is.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, borrowed uniquely through `&mut self`.
        unsafe { self.ptr.as_mut() }
    }
}

/// A pooled value never moves (only the pointer to it does), as with `Box`.
impl<T: ?Sized> Unpin for Pooled<T> {}

impl<F: Future + ?Sized> Future for Pooled<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the value behind `ptr` is never moved while it lives (see `Unpin` above).
        unsafe { Pin::new_unchecked(&mut **self.get_mut()) }.poll(cx)
    }
}

impl<T: ?Sized> fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pooled(..)")
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        rc::Rc,
        task::{Poll, Waker},
    };

    use super::*;

    /// Counts its drops.
    struct Tracked(Rc<Cell<u32>>, #[allow(dead_code)] [u8; 64]);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    fn address<T: ?Sized>(p: &Pooled<T>) -> *const u8 {
        p.ptr.as_ptr().cast::<u8>()
    }

    #[test]
    fn a_value_is_dropped_once_and_its_block_reused() {
        let drops = Rc::new(Cell::new(0));
        let first = Pooled::any(Tracked(drops.clone(), [7; 64]));
        let at = address(&first);
        assert!(first.downcast_ref::<Tracked>().is_some_and(|t| t.1 == [7; 64]));
        drop(first);
        assert_eq!(drops.get(), 1);
        // The same class, on the same thread: the block just returned.
        let second = Pooled::new([0u8; 100]);
        assert_eq!(address(&second), at);
        let third = Pooled::new([1u8; 100]);
        assert_ne!(address(&third), at, "a block in use is never handed out twice");
        assert_eq!(*second, [0u8; 100]);
        assert_eq!(*third, [1u8; 100]);
    }

    #[test]
    fn sizes_beyond_the_classes_and_zero_sized_values_work() {
        let big = Pooled::new([3u8; 40 * 1024]);
        assert!(big.iter().all(|&b| b == 3));
        assert!(matches!(big.storage, Storage::Own(_)));
        let mid = Pooled::new([4u8; 4 * 1024]);
        assert!(matches!(mid.storage, Storage::Block(1)));
        let unit = Pooled::any(());
        assert!(matches!(unit.storage, Storage::None));
        assert!(unit.downcast_ref::<()>().is_some());
        #[repr(align(64))]
        struct Aligned(u8);
        let aligned = Pooled::new(Aligned(9));
        assert_eq!(address(&aligned) as usize % 64, 0);
        assert_eq!(aligned.0, 9);
    }

    #[test]
    fn futures_run_in_place_and_drop_what_they_hold() {
        let drops = Rc::new(Cell::new(0));
        let held = Tracked(drops.clone(), [0; 64]);
        let mut fut: Pooled<dyn Future<Output = usize>> = Pooled::future(async move {
            let held = held;
            std::future::ready(()).await;
            held.1.len()
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(64));
        drop(fut);
        assert_eq!(drops.get(), 1, "the future's captures are dropped with it");
        // Never polled: its captures go with it.
        let held = Tracked(drops.clone(), [0; 64]);
        let never: Pooled<dyn Future<Output = ()>> = Pooled::future(async move { drop(held) });
        drop(never);
        assert_eq!(drops.get(), 2);
    }

    #[test]
    fn a_value_built_in_place_is_the_value_and_a_failed_build_gives_its_block_back() {
        let built = Pooled::new_with(|| [7u8; 4096]);
        assert!(built.iter().all(|&b| b == 7));
        drop(built);
        let free = || FREE.with(|f| f.borrow()[1].len());
        let before = free();
        assert!(before >= 1, "the block of the value above was kept");
        let failed = std::panic::catch_unwind(|| {
            Pooled::new_with(|| -> [u8; 4096] { panic!("the value could not be made") })
        });
        assert!(failed.is_err());
        assert_eq!(free(), before, "the block taken for it is back in the pool");
    }

    #[test]
    fn a_burst_is_kept_for_reuse_and_given_back_once_a_period_leaves_it_unused() {
        let free = || FREE.with(|f| f.borrow()[1].len());
        let burst: Vec<_> = (0..KEEP.1 + 100).map(|_| Pooled::new([1u8; 4096])).collect();
        drop(burst);
        assert_eq!(free(), KEEP.1, "a burst's blocks are kept, up to the bound");
        // A steady load of one request at a time: the burst's blocks are not needed.
        for _ in 0..2 * Spares::<Block>::PERIOD {
            drop(Pooled::new([2u8; 4096]));
        }
        // The trim runs in a take: the block taken then comes back on top of the minimum.
        assert!(free() <= KEEP.0 + 1, "{} blocks still kept after two periods", free());
        assert!(free() >= 1, "the block in use is still reused");
    }
}
