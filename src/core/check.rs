//! The seed's resource check, as one typed decision.
//!
//! `SafetyScheduler` and `QueueScheduler` in the reference share the shape of
//! the check but differ on purpose when the GPU figure is missing: Safety
//! lets the plugin through with a warning and skips the RAM check, Queue only
//! skips the missing figure. [`MissingGpuStats`] names that difference so both
//! run through the same function.

use super::amount::Amount;

/// Which resource a requirement or a block is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    GpuVram,
    SystemRam,
}

impl Resource {
    /// Key under `manifest['resources']`.
    pub fn requirement_key(self) -> &'static str {
        match self {
            Resource::GpuVram => "min_gpu_vram_mb",
            Resource::SystemRam => "min_system_ram_mb",
        }
    }

    /// Key in the stats mapping.
    pub fn stats_key(self) -> &'static str {
        match self {
            Resource::GpuVram => "gpu_free_memory_mb",
            Resource::SystemRam => "memory_available_mb",
        }
    }

    /// How the reference names it in its printed lines.
    pub fn label(self) -> &'static str {
        match self {
            Resource::GpuVram => "VRAM",
            Resource::SystemRam => "RAM",
        }
    }
}

/// What a plugin declares it needs (`manifest['resources']`, non-empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Requirements<A> {
    /// `Some(min_gpu_vram_mb)` when `requires_gpu` is truthy; the VRAM
    /// figure is not read at all otherwise, as in the reference.
    pub gpu_vram_mb: Option<A>,
    /// `min_system_ram_mb` (0 when absent).
    pub system_ram_mb: A,
}

/// What the stats say is free; `None` is "absent or None".
#[derive(Debug, Clone, PartialEq)]
pub struct Availability<A> {
    pub gpu_free_memory_mb: Option<A>,
    pub memory_available_mb: Option<A>,
}

/// How a missing `gpu_free_memory_mb` is treated for a GPU plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingGpuStats {
    /// `SafetyScheduler`: allow with a warning, and skip the RAM check.
    AllowWithWarning,
    /// `QueueScheduler`: skip only the VRAM figure, still check RAM.
    SkipFigure,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<A> {
    Allowed,
    /// GPU needed but no GPU figure in the stats (only with
    /// [`MissingGpuStats::AllowWithWarning`]); the plugin is let through.
    AllowedWithoutGpuStats,
    Blocked {
        resource: Resource,
        needed: A,
        available: A,
    },
}

impl<A> Decision<A> {
    /// Whether the plugin may start.
    pub fn admits(&self) -> bool {
        !matches!(self, Decision::Blocked { .. })
    }
}

/// A requirement and a stat that cannot be compared (e.g. `'4096' > 4096`);
/// carries both values so the error can name them.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareError<A, E> {
    pub resource: Resource,
    pub needed: A,
    pub available: A,
    pub source: E,
}

/// Checks requirements against availability, in the reference's order:
/// VRAM first (only for GPU plugins), then RAM.
pub fn check<A: Amount>(
    requirements: Requirements<A>,
    availability: Availability<A>,
    missing_gpu: MissingGpuStats,
) -> Result<Decision<A>, CompareError<A, A::Error>> {
    let Requirements {
        gpu_vram_mb,
        system_ram_mb,
    } = requirements;
    let Availability {
        gpu_free_memory_mb,
        memory_available_mb,
    } = availability;
    let gpu = gpu_vram_mb.map(|needed| move || Ok((needed, gpu_free_memory_mb)));
    let ram = move || Ok((system_ram_mb, memory_available_mb));
    check_lazily(gpu, ram, missing_gpu).map_err(|e| match e {
        CheckError::Compare(compare) => compare,
        CheckError::Read(never) => never,
    })
}

/// Why a lazy check failed: reading a figure, or comparing two.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckError<A, E, R> {
    Read(R),
    Compare(CompareError<A, E>),
}

/// [`check`] reading each pair of figures (needed, available) only when the
/// reference would read it: `gpu` is `Some` for a GPU plugin and is read
/// first; `ram` is not read at all when the decision is made on the GPU.
pub fn check_lazily<A, R, G, M>(
    gpu: Option<G>,
    ram: M,
    missing_gpu: MissingGpuStats,
) -> Result<Decision<A>, CheckError<A, A::Error, R>>
where
    A: Amount,
    G: FnOnce() -> Result<(A, Option<A>), R>,
    M: FnOnce() -> Result<(A, Option<A>), R>,
{
    if let Some(read_gpu) = gpu {
        match read_gpu().map_err(CheckError::Read)? {
            (_, None) if missing_gpu == MissingGpuStats::AllowWithWarning => {
                return Ok(Decision::AllowedWithoutGpuStats);
            }
            (_, None) => {}
            (needed, Some(available)) => {
                if let Some(block) =
                    compare(Resource::GpuVram, needed, available).map_err(CheckError::Compare)?
                {
                    return Ok(block);
                }
            }
        }
    }
    if let (needed, Some(available)) = ram().map_err(CheckError::Read)? {
        if let Some(block) =
            compare(Resource::SystemRam, needed, available).map_err(CheckError::Compare)?
        {
            return Ok(block);
        }
    }
    Ok(Decision::Allowed)
}

/// `Some(Blocked)` when the need exceeds what is available.
fn compare<A: Amount>(
    resource: Resource,
    needed: A,
    available: A,
) -> Result<Option<Decision<A>>, CompareError<A, A::Error>> {
    match needed.exceeds(&available) {
        Ok(false) => Ok(None),
        Ok(true) => Ok(Some(Decision::Blocked {
            resource,
            needed,
            available,
        })),
        Err(source) => Err(CompareError {
            resource,
            needed,
            available,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amount::Num;
    use std::cell::RefCell;

    #[test]
    fn lazy_check_reads_ram_only_when_the_reference_would() {
        let reads = RefCell::new(Vec::new());
        let gpu = || {
            reads.borrow_mut().push("gpu");
            Ok::<_, ()>((Num::Int(8000), Some(Num::Int(4096))))
        };
        let ram = || {
            reads.borrow_mut().push("ram");
            Ok::<_, ()>((Num::Int(1), Some(Num::Int(2))))
        };
        let d = check_lazily(Some(gpu), ram, MissingGpuStats::SkipFigure);
        assert!(matches!(
            d,
            Ok(Decision::Blocked {
                resource: Resource::GpuVram,
                ..
            })
        ));
        assert_eq!(*reads.borrow(), vec!["gpu"]);
    }

    #[test]
    fn lazy_check_passes_read_errors_through() {
        let ram = || Err::<(Num, Option<Num>), _>("no mapping");
        type Read = fn() -> Result<(Num, Option<Num>), &'static str>;
        let none: Option<Read> = None;
        let d = check_lazily(none, ram, MissingGpuStats::SkipFigure);
        assert_eq!(d, Err(CheckError::Read("no mapping")));
    }

    fn reqs(gpu: Option<i64>, ram: i64) -> Requirements<Num> {
        Requirements {
            gpu_vram_mb: gpu.map(Num::Int),
            system_ram_mb: Num::Int(ram),
        }
    }

    fn avail(gpu: Option<f64>, ram: Option<f64>) -> Availability<Num> {
        Availability {
            gpu_free_memory_mb: gpu.map(Num::Float),
            memory_available_mb: ram.map(Num::Float),
        }
    }

    fn run(r: Requirements<Num>, a: Availability<Num>, m: MissingGpuStats) -> Decision<Num> {
        match check(r, a, m) {
            Ok(d) => d,
            Err(e) => match e.source {},
        }
    }

    #[test]
    fn allowed_when_everything_fits() {
        let d = run(
            reqs(Some(4096), 1024),
            avail(Some(4096.0), Some(2048.0)),
            MissingGpuStats::AllowWithWarning,
        );
        assert_eq!(d, Decision::Allowed);
    }

    #[test]
    fn vram_is_checked_before_ram() {
        let d = run(
            reqs(Some(8000), 99_999),
            avail(Some(4095.5), Some(1.0)),
            MissingGpuStats::SkipFigure,
        );
        assert_eq!(
            d,
            Decision::Blocked {
                resource: Resource::GpuVram,
                needed: Num::Int(8000),
                available: Num::Float(4095.5)
            }
        );
    }

    #[test]
    fn safety_skips_ram_without_gpu_stats() {
        let d = run(
            reqs(Some(1), 99_999),
            avail(None, Some(1.0)),
            MissingGpuStats::AllowWithWarning,
        );
        assert_eq!(d, Decision::AllowedWithoutGpuStats);
        assert!(d.admits());
    }

    #[test]
    fn queue_still_checks_ram_without_gpu_stats() {
        let d = run(
            reqs(Some(1), 99_999),
            avail(None, Some(1.0)),
            MissingGpuStats::SkipFigure,
        );
        assert!(matches!(
            d,
            Decision::Blocked {
                resource: Resource::SystemRam,
                ..
            }
        ));
        assert!(!d.admits());
    }

    #[test]
    fn gpu_figures_ignored_for_cpu_plugins() {
        let d = run(
            reqs(None, 10),
            avail(Some(0.0), Some(10.0)),
            MissingGpuStats::AllowWithWarning,
        );
        assert_eq!(d, Decision::Allowed);
    }

    #[test]
    fn missing_ram_figure_is_skipped() {
        let d = run(
            reqs(None, i64::MAX),
            avail(None, None),
            MissingGpuStats::SkipFigure,
        );
        assert_eq!(d, Decision::Allowed);
    }

    #[derive(Debug, PartialEq)]
    struct Strict(&'static str);
    impl Amount for Strict {
        type Error = &'static str;
        fn exceeds(&self, _other: &Self) -> Result<bool, Self::Error> {
            Err(self.0)
        }
    }

    #[test]
    fn compare_errors_name_the_resource() {
        let r = Requirements {
            gpu_vram_mb: None,
            system_ram_mb: Strict("bad"),
        };
        let a = Availability {
            gpu_free_memory_mb: None,
            memory_available_mb: Some(Strict("x")),
        };
        let err = check(r, a, MissingGpuStats::SkipFigure).err();
        assert_eq!(
            err,
            Some(CompareError {
                resource: Resource::SystemRam,
                needed: Strict("bad"),
                available: Strict("x"),
                source: "bad"
            })
        );
    }
}
