//! Our own CPU and I/O priority. The systemd units set `Nice=` and the I/O scheduling class
//! for the runs they start; a peer's `receive` runs under sshd (outside those units), and Pod
//! Mode's containers have no such settings — so the binary lowers its own priority at the
//! start of its bulk work, to at least what the units ask. It never raises a priority: a
//! unit or an administrator that set a lower one keeps it.

/// The nice we go down to: at nice 0, etcd weighs about nine times as much for the CPU.
const NICE: i32 = 10;
/// The I/O priority we go down to: best-effort at its lowest level (idle would let a busy
/// etcd starve a backup for hours).
const IO: IoPrio = IoPrio {
    class: IoClass::BestEffort,
    level: 7,
};

/// An I/O priority as `ioprio_get(2)` gives it: a class and a level within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoPrio {
    pub class: IoClass,
    pub level: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// No class set: the kernel derives best-effort at `(nice + 20) / 5` from the CPU nice.
    FromNice,
    RealTime,
    BestEffort,
    Idle,
}

impl IoPrio {
    const CLASS_SHIFT: u32 = 13;

    fn from_raw(raw: i32) -> IoPrio {
        let class = match raw >> Self::CLASS_SHIFT {
            1 => IoClass::RealTime,
            2 => IoClass::BestEffort,
            3 => IoClass::Idle,
            _ => IoClass::FromNice,
        };
        IoPrio {
            class,
            level: (raw & 0x7) as u8,
        }
    }

    fn raw(self) -> i32 {
        let class = match self.class {
            IoClass::FromNice => 0,
            IoClass::RealTime => 1,
            IoClass::BestEffort => 2,
            IoClass::Idle => 3,
        };
        (class << Self::CLASS_SHIFT) | i32::from(self.level)
    }
}

/// What to set, from the current nice and I/O priority: `None` where the current one is
/// already as low as ours (or lower). Pure: the rule, tested by the table below.
pub fn lowered(nice: i32, io: IoPrio) -> (Option<i32>, Option<IoPrio>) {
    let set_nice = (nice < NICE).then_some(NICE);
    let set_io = match io.class {
        IoClass::Idle => None,
        IoClass::BestEffort if io.level >= IO.level => None,
        // Derived from the nice we end with: as low as ours when that nice gives it.
        IoClass::FromNice if (nice.max(NICE) + 20) / 5 >= i32::from(IO.level) => None,
        _ => Some(IO),
    };
    (set_nice, set_io)
}

/// Lowers this process's CPU and I/O priority to at least nice 10 and best-effort 7. Call it before any thread
/// starts: on Linux both are per thread, and threads take their creator's. A failure (a
/// seccomp profile, an old kernel) is logged and the work goes on at the priority it has.
pub fn lower() {
    // SAFETY: getpriority/setpriority and the ioprio syscalls take plain integers and touch
    // nothing of ours; errno is cleared first because -1 is a valid nice.
    let nice = unsafe {
        *nix::libc::__errno_location() = 0;
        nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0)
    };
    if nice == -1 && std::io::Error::last_os_error().raw_os_error() != Some(0) {
        tracing::debug!("cannot read our nice: {}", std::io::Error::last_os_error());
        return;
    }
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
    if raw < 0 {
        tracing::debug!(
            "cannot read our I/O priority: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let (set_nice, set_io) = lowered(nice, IoPrio::from_raw(raw as i32));
    if let Some(nice) = set_nice
        && unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) } != 0
    {
        tracing::warn!(
            "cannot lower our CPU priority to nice {nice}: {}",
            std::io::Error::last_os_error()
        );
    }
    if let Some(io) = set_io
        && unsafe { nix::libc::syscall(nix::libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, io.raw()) }
            != 0
    {
        tracing::warn!(
            "cannot lower our I/O priority to {io:?}: {}",
            std::io::Error::last_os_error()
        );
    }
}

const IOPRIO_WHO_PROCESS: nix::libc::c_int = 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn io(class: IoClass, level: u8) -> IoPrio {
        IoPrio { class, level }
    }

    #[test]
    fn only_ever_lowers() {
        use IoClass::*;
        let be7 = Some(io(BestEffort, 7));
        for (nice, current, want) in [
            // A process started at the default priorities.
            (0, io(FromNice, 0), (Some(10), be7)),
            // Under the units: already where they put it (backup, spray; verify's lower).
            (10, io(BestEffort, 7), (None, None)),
            (19, io(Idle, 0), (None, None)),
            // Lower than ours stays lower.
            (15, io(BestEffort, 7), (None, None)),
            (0, io(Idle, 0), (Some(10), None)),
            // Derived from a nice that already gives level 7.
            (15, io(FromNice, 0), (None, None)),
            (5, io(FromNice, 0), (Some(10), be7)),
            // Higher than ours comes down.
            (-5, io(BestEffort, 0), (Some(10), be7)),
            (10, io(BestEffort, 6), (None, be7)),
            (10, io(RealTime, 4), (None, be7)),
        ] {
            assert_eq!(lowered(nice, current), want, "{nice} {current:?}");
        }
    }

    #[test]
    fn raw_round_trips() {
        for prio in [
            io(IoClass::BestEffort, 7),
            io(IoClass::Idle, 0),
            io(IoClass::RealTime, 3),
            io(IoClass::FromNice, 0),
        ] {
            assert_eq!(IoPrio::from_raw(prio.raw()), prio);
        }
        // As the kernel writes them: IOPRIO_PRIO_VALUE(class, data).
        assert_eq!(io(IoClass::BestEffort, 7).raw(), (2 << 13) | 7);
        assert_eq!(io(IoClass::Idle, 0).raw(), 3 << 13);
    }
}
