//! A process's own accounting from `/proc`: CPU time and resident memory.

use std::time::Duration;

/// Clock ticks per second for `/proc/*/stat` times (`getconf CLK_TCK`).
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// User plus system CPU time of process `pid` (all its threads), or `None`
/// when `/proc` cannot tell.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    cpu_times(pid).map(|(user, system)| user + system)
}

/// User and system CPU time of process `pid` (all its threads).
pub fn cpu_times(pid: u32) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks();
    let time = |t: u64| Duration::from_nanos(t * 1_000_000_000 / ticks);
    Some((time(utime), time(stime)))
}

/// Resident memory of process `pid`, in bytes.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        // Burn a little CPU so the counter moves past zero ticks.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_time(pid).is_some());
        assert!(resident_bytes(pid).unwrap() > 0);
    }
}
