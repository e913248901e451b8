//! The API's VM configuration (`PUT /api/v1/vms/{id}` body): its JSON shape, its bounds, and the
//! [`VmSpec`] it turns into.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vpm_abi::harness::{BootParams, Workload, BOOT_MAGIC, FLAG_PV, FLAG_TRANSIENT_HINTS};
use vpm_abi::PAGE_SIZE;

use crate::pool::media::NAME_LEN;
use crate::pool::TenantConfig;
use crate::qemu::{EpochSpec, QemuSpec};
use crate::vmm::{DoorbellKind, Mode, VmSpec};

/// Largest vPM of one VM, MiB (the test guest's vPM window).
pub const MAX_VPM_MIB: u64 = 1024;
/// Longest epoch interval, ms (one day).
pub const MAX_EPOCH_MS: u64 = 86_400_000;
/// Longest ring-poller idle window a VM may ask for, µs (as `vpm guest --poll-us`).
pub const MAX_POLL_US: u64 = 1_000_000;
/// Numbers a workload takes.
pub const MAX_WORKLOAD_ARGS: usize = 6;

/// Why a VM configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A number outside its range.
    #[error("{field} = {value} is out of range ({min}..={max})")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A vCPU count the front cannot run.
    #[error("vcpus = {0}: front kvm takes 1 to {kvm}, front qemu 1 to {qemu}",
            kvm = vpm_abi::harness::MAX_VCPUS, qemu = crate::qemu::MAX_VCPUS)]
    Vcpus(u32),
    /// A field the front needs is missing, or one it does not take is given.
    #[error("front {front}: {what}")]
    Front {
        /// The front.
        front: &'static str,
        /// What is wrong.
        what: &'static str,
    },
    /// Too many workload arguments.
    #[error("workload.args has {0} numbers, at most {MAX_WORKLOAD_ARGS} are allowed")]
    TooManyArgs(usize),
    /// A VM id the pool cannot use as a tenant name.
    #[error("VM id {0:?}: use 1 to {NAME_LEN} letters, digits, '.', '_' or '-'")]
    BadId(String),
    /// A time limit that is negative or not finite.
    #[error("seconds = {0}: give a finite number of seconds, not negative")]
    Seconds(f64),
}

/// Which VMM runs the VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Front {
    /// VPM's own KVM VMM with the test guest.
    #[default]
    Kvm,
    /// QEMU (TCG) with a Linux guest and vpm.ko; modes `pv` and `full`.
    Qemu,
}

/// How vPM is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// Every page mapped to its PM home.
    Direct,
    /// Direct, and every persist msyncs the whole region.
    Msync,
    /// Unmodified guest, DRAM/PM tiers and epochs.
    Full,
    /// Para-virtual hints plus epochs.
    Pv,
}

impl From<ModeName> for Mode {
    fn from(m: ModeName) -> Mode {
        match m {
            ModeName::Direct => Mode::Direct,
            ModeName::Msync => Mode::Msync,
            ModeName::Full => Mode::Full,
            ModeName::Pv => Mode::Pv,
        }
    }
}

/// The test guest's workloads (names as `vpm guest --workload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadName {
    /// Fill, then verify checksums while pages move.
    Checksum,
    /// Sequence-numbered records.
    SeqWriter,
    /// Check a sequence-numbered image.
    SeqCheck,
    /// Random 4 KiB writes.
    RandomWrites,
    /// Writes of a given size, 90 % of them to a hot tenth of the vPM.
    SkewedWrites,
    /// Sequential writes.
    SeqWrites,
    /// A persistent key-value store.
    Kv,
    /// An append-only log.
    Log,
    /// Transient scratch written heavily.
    Transient,
    /// Hostile hints.
    Hostile,
    /// Persist latency.
    PersistLatency,
    /// VM exit round trip.
    ExitLatency,
}

impl From<WorkloadName> for Workload {
    fn from(w: WorkloadName) -> Workload {
        match w {
            WorkloadName::Checksum => Workload::Checksum,
            WorkloadName::SeqWriter => Workload::SeqWriter,
            WorkloadName::SeqCheck => Workload::SeqCheck,
            WorkloadName::RandomWrites => Workload::RandomWrites,
            WorkloadName::SkewedWrites => Workload::SkewedWrites,
            WorkloadName::SeqWrites => Workload::SeqWrites,
            WorkloadName::Kv => Workload::KvStore,
            WorkloadName::Log => Workload::AppendLog,
            WorkloadName::Transient => Workload::Transient,
            WorkloadName::Hostile => Workload::Hostile,
            WorkloadName::PersistLatency => Workload::PersistLatency,
            WorkloadName::ExitLatency => Workload::ExitLatency,
        }
    }
}

/// The guest's workload and its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Which workload.
    pub kind: WorkloadName,
    /// Its numbers (see `vpm_abi::harness::Workload`).
    #[serde(default)]
    pub args: Vec<u64>,
    /// Seed.
    #[serde(default = "one")]
    pub seed: u64,
    /// Mark transient scratch with hints (the transient workload).
    #[serde(default)]
    pub transient_hints: bool,
}

fn one() -> u64 {
    1
}

fn default_epoch_ms() -> u64 {
    100
}

fn default_dram_mib() -> u64 {
    8
}

fn default_vcpus() -> u32 {
    1
}

fn default_vpmtest() -> String {
    "basic".into()
}

fn default_timeout_s() -> u64 {
    120
}

/// The Linux guest of the `qemu` front.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// Guest kernel (bzImage), a host path.
    pub kernel: PathBuf,
    /// Initramfs (guest-driver/build-guest.sh makes one with vpm.ko and vpmtest).
    pub initrd: PathBuf,
    /// What the in-guest vpmtest runs.
    #[serde(default = "default_vpmtest")]
    pub vpmtest: String,
    /// Extra kernel command line.
    #[serde(default)]
    pub append: String,
    /// QEMU is stopped after this many seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
}

/// A vPM device (`PUT /api/v1/vms/{id}/pmem/{dev}` body, as Cloud Hypervisor's
/// `vm.add-pmem` and Firecracker's `PUT /pmem/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemConfig {
    /// vPM size, MiB (the VM's `vpm_mib`).
    pub size_mib: u64,
    /// PM homes quota, MiB (default: the size).
    #[serde(default)]
    pub pm_quota_mib: Option<u64>,
    /// Redo-log size, MiB (default: an eighth of the size, at least 2).
    #[serde(default)]
    pub log_mib: Option<u64>,
}

/// Guest RAM of a QEMU VM, MiB, and where vPM starts in it.
pub const QEMU_RAM_MIB: u64 = 512;
/// Offset of vPM in a QEMU guest's RAM, MiB.
pub const QEMU_VPM_OFFSET_MIB: u64 = 384;

/// A VM as the API creates it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Which VMM runs it.
    #[serde(default)]
    pub front: Front,
    /// How vPM is served.
    pub mode: ModeName,
    /// vPM size, MiB: the VM's vPM device `pmem0` (0 or absent: no device yet; add one with
    /// `PUT /api/v1/vms/{id}/pmem/{dev}`).
    #[serde(default)]
    pub vpm_mib: u64,
    /// DRAM share of the tiered modes, MiB.
    #[serde(default = "default_dram_mib")]
    pub dram_mib: u64,
    /// Least DRAM the service's shared budget leaves this VM, MiB (default: a quarter of
    /// `dram_mib`).
    #[serde(default)]
    pub dram_min_mib: Option<u64>,
    /// PM homes quota, MiB (default: the vPM size); pages beyond get capacity homes.
    #[serde(default)]
    pub pm_quota_mib: Option<u64>,
    /// Redo-log size, MiB (default: an eighth of vPM, at least 2).
    #[serde(default)]
    pub log_mib: Option<u64>,
    /// vCPUs: front `kvm` up to `vpm_abi::harness::MAX_VCPUS` (one thread and one hint ring each),
    /// front `qemu` up to [`crate::qemu::MAX_VCPUS`] (QEMU `-smp`).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Epoch interval, ms (0: only on request and at shutdown).
    #[serde(default = "default_epoch_ms")]
    pub epoch_ms: u64,
    /// Polled rings: the ring poller's idle window, µs (0, the default: doorbell only); as
    /// `vpm guest --poll-us` (front `kvm`) and `vpm qemu --poll-us` (front `qemu`).
    #[serde(default)]
    pub poll_us: u64,
    /// The test guest's workload (front `kvm`; required there).
    #[serde(default)]
    pub workload: Option<WorkloadConfig>,
    /// The Linux guest (front `qemu`; required there).
    #[serde(default)]
    pub qemu: Option<QemuConfig>,
    /// Persistence hints (default: on except in full mode).
    #[serde(default)]
    pub hints: Option<bool>,
    /// Stop the guest after this many seconds.
    #[serde(default)]
    pub seconds: Option<f64>,
    /// Append acknowledged drain sequences to this host file (crash witness).
    #[serde(default)]
    pub witness: Option<PathBuf>,
    /// Append `epoch record` to this host file after each committed epoch.
    #[serde(default)]
    pub epoch_witness: Option<PathBuf>,
}

fn check(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

/// Whether `id` can name a VM (and its pool tenant and files).
pub fn check_id(id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= NAME_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadId(id.to_string()))
    }
}

impl VmConfig {
    /// Checks every field's bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let front = |what| {
            Err(ConfigError::Front {
                front: if self.front == Front::Qemu {
                    "qemu"
                } else {
                    "kvm"
                },
                what,
            })
        };
        match self.front {
            Front::Kvm if self.workload.is_none() => return front("give a workload"),
            Front::Kvm if self.qemu.is_some() => return front("takes no qemu section"),
            Front::Qemu if self.qemu.is_none() => return front("give a qemu section"),
            Front::Qemu if self.workload.is_some() => return front("takes no workload"),
            Front::Qemu if !matches!(self.mode, ModeName::Pv | ModeName::Full) => {
                return front("serves modes pv (hints) and full (epochs) only")
            }
            _ => {}
        }
        let max_vcpus = match self.front {
            Front::Kvm => vpm_abi::harness::MAX_VCPUS,
            Front::Qemu => crate::qemu::MAX_VCPUS,
        };
        if !(1..=max_vcpus).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if let Some(q) = &self.qemu {
            check("qemu.timeout_s", q.timeout_s, 1, MAX_EPOCH_MS / 1000)?;
        }
        if self.vpm_mib > 0 {
            self.validate_pmem()?;
        } else if let Some(m) = self.dram_min_mib {
            check("dram_min_mib", m, 0, self.dram_mib)?;
        }
        check("epoch_ms", self.epoch_ms, 0, MAX_EPOCH_MS)?;
        check("poll_us", self.poll_us, 0, MAX_POLL_US)?;
        if let Some(w) = self
            .workload
            .as_ref()
            .filter(|w| w.args.len() > MAX_WORKLOAD_ARGS)
        {
            return Err(ConfigError::TooManyArgs(w.args.len()));
        }
        if let Some(s) = self.seconds {
            if !s.is_finite() || s < 0.0 || s > MAX_EPOCH_MS as f64 / 1000.0 {
                return Err(ConfigError::Seconds(s));
            }
        }
        Ok(())
    }

    /// Checks the vPM device's bounds (`vpm_mib` and what depends on it): the size within the
    /// front's limit, the DRAM share, PM quota and log within the size.
    pub fn validate_pmem(&self) -> Result<(), ConfigError> {
        let max_vpm = match self.front {
            Front::Kvm => MAX_VPM_MIB,
            Front::Qemu => QEMU_RAM_MIB - QEMU_VPM_OFFSET_MIB,
        };
        check("vpm_mib", self.vpm_mib, 1, max_vpm)?;
        check("dram_mib", self.dram_mib, 0, self.vpm_mib)?;
        if let Some(m) = self.dram_min_mib {
            check("dram_min_mib", m, 0, self.dram_mib)?;
        }
        if let Some(q) = self.pm_quota_mib {
            check("pm_quota_mib", q, 0, self.vpm_mib)?;
        }
        if let Some(l) = self.log_mib {
            check("log_mib", l, 1, self.vpm_mib.max(1))?;
        }
        Ok(())
    }

    /// The pool tenant of VM `id`.
    pub fn tenant(&self, id: &str) -> TenantConfig {
        let vpm = self.vpm_mib << 20;
        TenantConfig {
            name: id.to_string(),
            vpm_bytes: vpm,
            pm_quota_bytes: self.pm_quota_mib.map_or(vpm, |m| m << 20),
            dram_budget_bytes: self.dram_mib << 20,
            log_bytes: self.log_mib.map_or((vpm / 8).max(2 << 20), |m| m << 20),
        }
    }

    /// The least DRAM the shared budget leaves the VM, pages.
    pub fn dram_min_pages(&self) -> u64 {
        (self.dram_min_mib.unwrap_or(0) << 20).max((self.dram_mib << 20) / 4) / PAGE_SIZE
    }

    /// Pages of vPM.
    pub fn pages(&self) -> u64 {
        (self.vpm_mib << 20) / PAGE_SIZE
    }

    /// The QEMU spec of VM `id` (front `qemu`), its files in `work_dir`.
    pub fn qemu_spec(&self, id: &str, work_dir: PathBuf) -> Option<QemuSpec> {
        let q = self.qemu.as_ref()?;
        Some(QemuSpec {
            state: work_dir,
            name: id.to_string(),
            kernel: q.kernel.clone(),
            initrd: q.initrd.clone(),
            append: format!("vpmtest={} {}", q.vpmtest.replace(' ', ","), q.append),
            ram_mib: QEMU_RAM_MIB,
            vcpus: self.vcpus,
            vpm_offset_mib: QEMU_VPM_OFFSET_MIB,
            timeout: Duration::from_secs(q.timeout_s),
            persist_witness: self.witness.clone(),
            poll_us: self.poll_us,
            epochs: (self.mode == ModeName::Full).then(|| EpochSpec {
                epoch_ms: self.epoch_ms,
                witness: self.epoch_witness.clone(),
            }),
        })
    }

    /// The VM spec of VM `id` (front `kvm`), its working files in `work_dir`.
    pub fn spec(&self, id: &str, work_dir: PathBuf) -> VmSpec {
        let mode: Mode = self.mode.into();
        let hints = self.hints.unwrap_or(mode != Mode::Full);
        let w = self.workload.clone().unwrap_or(WorkloadConfig {
            kind: WorkloadName::Kv,
            args: Vec::new(),
            seed: 1,
            transient_hints: false,
        });
        let mut arg = [0u64; MAX_WORKLOAD_ARGS];
        for (slot, v) in arg.iter_mut().zip(&w.args) {
            *slot = *v;
        }
        let flags = if hints { FLAG_PV } else { 0 }
            | if w.transient_hints {
                FLAG_TRANSIENT_HINTS
            } else {
                0
            };
        VmSpec {
            name: id.to_string(),
            mode,
            dram_budget_bytes: self.dram_mib << 20,
            epoch_interval: (self.epoch_ms > 0).then(|| Duration::from_millis(self.epoch_ms)),
            migrate_interval: None,
            migrate_pages: 0,
            params: BootParams {
                magic: BOOT_MAGIC,
                workload: Workload::from(w.kind) as u32,
                flags,
                seed: w.seed,
                arg,
                ..BootParams::default()
            },
            witness: self.witness.clone(),
            epoch_witness: self.epoch_witness.clone(),
            work_dir,
            time_limit: self.seconds.map(Duration::from_secs_f64),
            doorbell: DoorbellKind::Exit,
            poll_us: self.poll_us,
            precopy_rounds: Some(VmSpec::DEFAULT_PRECOPY_ROUNDS),
            vcpus: self.vcpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VmConfig, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let c =
            parse(r#"{"mode":"pv","vpm_mib":16,"workload":{"kind":"kv","args":[100]}}"#).unwrap();
        assert_eq!(
            (c.front, c.vcpus, c.epoch_ms, c.dram_mib),
            (Front::Kvm, 1, 100, 8)
        );
        c.validate().unwrap();
        let spec = c.spec("a", PathBuf::from("/tmp"));
        assert_eq!(spec.params.flags & FLAG_PV, FLAG_PV);
        assert_eq!(spec.params.arg[0], 100);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(parse(r#"{"mode":"pv","vpm_mib":16,"workload":{"kind":"kv"},"x":1}"#).is_err());
        assert!(parse(r#"{"mode":"fast","vpm_mib":16,"workload":{"kind":"kv"}}"#).is_err());
        assert!(parse(r#"{"mode":"pv","vpm_mib":-1,"workload":{"kind":"kv"}}"#).is_err());
        let bad = [
            r#"{"mode":"pv","vpm_mib":4096,"workload":{"kind":"kv"}}"#,
            r#"{"mode":"pv","vpm_mib":16,"dram_mib":17,"workload":{"kind":"kv"}}"#,
            r#"{"mode":"pv","vpm_mib":16,"vcpus":9,"workload":{"kind":"kv"}}"#,
            r#"{"mode":"pv","vpm_mib":16,"vcpus":0,"workload":{"kind":"kv"}}"#,
            r#"{"mode":"pv","vpm_mib":16,"front":"qemu","workload":{"kind":"kv"}}"#,
            r#"{"mode":"direct","vpm_mib":16,"front":"qemu","qemu":{"kernel":"k","initrd":"i"}}"#,
            r#"{"mode":"pv","vpm_mib":256,"front":"qemu","qemu":{"kernel":"k","initrd":"i"}}"#,
            r#"{"mode":"pv","vpm_mib":16}"#,
            r#"{"front":"qemu","mode":"pv","vpm_mib":64,"vcpus":0,"qemu":{"kernel":"k","initrd":"i"}}"#,
            r#"{"front":"qemu","mode":"pv","vpm_mib":64,"vcpus":9,"qemu":{"kernel":"k","initrd":"i"}}"#,
            r#"{"mode":"pv","vpm_mib":16,"seconds":-1,"workload":{"kind":"kv"}}"#,
            r#"{"mode":"pv","vpm_mib":16,"workload":{"kind":"kv","args":[1,2,3,4,5,6,7]}}"#,
        ];
        for b in bad {
            assert!(parse(b).unwrap().validate().is_err(), "accepted {b}");
        }
    }

    #[test]
    fn a_qemu_vm_takes_a_linux_guest() {
        let c = parse(r#"{"front":"qemu","mode":"pv","vpm_mib":64,"qemu":{"kernel":"k","initrd":"i","vpmtest":"writer 5"}}"#)
            .unwrap();
        c.validate().unwrap();
        let q = c.qemu_spec("l", PathBuf::from("/tmp")).unwrap();
        assert!(q.append.starts_with("vpmtest=writer,5 "), "{}", q.append);
        assert_eq!(q.vcpus, 1);
        let c = parse(r#"{"front":"qemu","mode":"pv","vpm_mib":64,"vcpus":2,"qemu":{"kernel":"k","initrd":"i"}}"#)
            .unwrap();
        c.validate().unwrap();
        assert_eq!(c.qemu_spec("l", PathBuf::from("/tmp")).unwrap().vcpus, 2);
        assert_eq!(c.qemu_spec("l", PathBuf::from("/tmp")).unwrap().poll_us, 0);
        let mut c = parse(r#"{"front":"qemu","mode":"pv","vpm_mib":64,"vcpus":2,"poll_us":200,"qemu":{"kernel":"k","initrd":"i"}}"#)
            .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.qemu_spec("l", PathBuf::from("/tmp")).unwrap().poll_us,
            200
        );
        c.poll_us = MAX_POLL_US + 1;
        assert!(c.validate().is_err(), "poll_us past its maximum");
        assert!(parse(
            r#"{"front":"qemu","mode":"pv","vpm_mib":64,"qemu":{"kernel":"k","initrd":"i","x":1}}"#
        )
        .is_err());
    }

    #[test]
    fn a_vm_without_vpm_is_valid_and_its_device_is_checked_when_added() {
        let mut c = parse(r#"{"mode":"pv","workload":{"kind":"kv"}}"#).unwrap();
        c.validate().unwrap();
        assert_eq!(c.vpm_mib, 0);
        c.vpm_mib = 4;
        assert!(c.validate_pmem().is_err(), "dram_mib 8 > vpm_mib 4");
        c.vpm_mib = 16;
        c.pm_quota_mib = Some(17);
        assert!(c.validate_pmem().is_err(), "quota over the size");
        c.pm_quota_mib = Some(16);
        c.validate_pmem().unwrap();
        let q = parse(r#"{"front":"qemu","mode":"full","vpm_mib":64,"epoch_ms":50,"qemu":{"kernel":"k","initrd":"i"}}"#)
            .unwrap();
        q.validate().unwrap();
        let spec = q.qemu_spec("f", PathBuf::from("/tmp")).unwrap();
        assert_eq!(spec.epochs.map(|e| e.epoch_ms), Some(50));
    }

    #[test]
    fn ids_are_tenant_names() {
        assert!(check_id("vm-1.a_b").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(NAME_LEN + 1)] {
            assert!(check_id(bad).is_err(), "accepted {bad:?}");
        }
    }
}
