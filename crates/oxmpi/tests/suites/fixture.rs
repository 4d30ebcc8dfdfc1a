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

        /// Runs `f(universe)` on `n` thread-ranks and propagates panics. A rank that panicked
        /// (a failed check) can leave its peers waiting for it forever, since thread-ranks
        /// cannot see one another die: a few seconds after the first rank has ended in a panic
        /// the test fails with it, rather than hanging. (A rank that panics inside a scope
        /// with requests in flight waits for them while it unwinds, for 2 s, and then aborts
        /// the test process: the transport may still write the scope's buffers.)
        fn threads(n: u32, f: impl Fn(oxmpi::Universe) + Send + Sync + Copy + 'static) {
            let mut handles: Vec<Option<std::thread::JoinHandle<()>>> = fabrics(n)
                .into_iter()
                .map(|fab| {
                    Some(std::thread::spawn(move || {
                        f(oxmpi::Universe::from_fabric(fab))
                    }))
                })
                .collect();
            let mut panicked: Option<(usize, std::time::Instant)> = None;
            while handles.iter().any(Option::is_some) {
                for (r, slot) in handles.iter_mut().enumerate() {
                    if slot.as_ref().is_some_and(|h| h.is_finished()) {
                        let h = slot.take().expect("checked above");
                        if h.join().is_err() && panicked.is_none() {
                            panicked = Some((r, std::time::Instant::now()));
                        }
                    }
                }
                if let Some((r, at)) = panicked {
                    let waiting = handles.iter().any(Option::is_some);
                    if !waiting || at.elapsed() > std::time::Duration::from_secs(5) {
                        panic!("thread-rank {r} panicked (its message is above)");
                    }
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    };
}
