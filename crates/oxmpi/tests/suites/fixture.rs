//! The thread-rank fixture of the suites: `thread_ranks!(world_fn)` defines `fabrics(n)` (the
//! connected fabrics of `n` ranks from `world_fn`) and `threads(n, f)` (runs `f(universe)` on
//! `n` thread-ranks and propagates their panics).

macro_rules! thread_ranks {
    ($world:path) => {
        /// `n` connected fabrics; element `r` belongs to rank `r`.
        fn fabrics(n: u32) -> Vec<Box<dyn oxmpi_fabric::Fabric + Send>> {
            $world(n)
                .into_iter()
                .map(|f| Box::new(f) as Box<dyn oxmpi_fabric::Fabric + Send>)
                .collect()
        }

        /// Runs `f(universe)` on `n` thread-ranks and propagates panics.
        fn threads(n: u32, f: impl Fn(oxmpi::Universe) + Send + Sync + Copy + 'static) {
            let handles: Vec<_> = fabrics(n)
                .into_iter()
                .map(|fab| std::thread::spawn(move || f(oxmpi::Universe::from_fabric(fab))))
                .collect();
            for h in handles {
                h.join().expect("thread-rank panicked");
            }
        }
    };
}
