//! Crash tests' witness files: lines the VMM appends when the guest acknowledges a drain, and when
//! an epoch commits, so a trial can check recovery against what was promised.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use vm_memory::GuestMemoryMmap;
use vpm_abi::harness::acked_seq_value;

use super::guest_map::read_report_value;
use super::VmmError;

/// Report value the guest keeps its newest complete record in.
const NEWEST_RECORD_VALUE: u64 = 2;

/// The open witness files of one VM (either may be absent).
#[derive(Debug, Default)]
pub struct Witnesses {
    drain: Mutex<Option<File>>,
    epoch: Mutex<Option<File>>,
}

/// Opens a witness file for appending.
fn open(path: Option<&Path>) -> Result<Option<File>, VmmError> {
    path.map(|p| {
        crate::private_file::options()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|source| VmmError::Witness {
                path: p.to_path_buf(),
                source,
            })
    })
    .transpose()
}

impl Witnesses {
    /// Opens the drain witness at `drain` and the epoch witness at `epoch`, where given.
    pub fn open(drain: Option<&Path>, epoch: Option<&Path>) -> Result<Witnesses, VmmError> {
        Ok(Witnesses {
            drain: Mutex::new(open(drain)?),
            epoch: Mutex::new(open(epoch)?),
        })
    }

    /// Appends vCPU `vcpu`'s acknowledged sequence (its report value,
    /// `vpm_abi::harness::acked_seq_value`) to the drain witness: `seq` for vCPU 0, `seq vcpu`
    /// for the others (vCPUs without such a value are not recorded).
    pub fn drain(&self, ram: &GuestMemoryMmap, vcpu: u32) {
        let Some(value) = acked_seq_value(vcpu) else {
            return;
        };
        let mut w = self.drain.lock().expect("witness");
        if let Some(f) = w.as_mut() {
            if let Ok(seq) = read_report_value(ram, value as u64) {
                // A crash test's witness: a lost line only weakens the check, never fakes a pass.
                let _ = if vcpu == 0 {
                    writeln!(f, "{seq}")
                } else {
                    writeln!(f, "{seq} {vcpu}")
                };
            }
        }
    }

    /// Appends `epoch record` to the epoch witness: the guest's newest complete record (report
    /// value 2), read while the vCPU is paused, is in the image epoch `epoch` committed.
    pub fn epoch(&self, ram: &GuestMemoryMmap, epoch: u64) {
        let record = self.epoch_record(ram);
        self.write_epoch(epoch, record);
    }

    /// The guest's newest complete record (report value 2), read at an epoch's stop when an
    /// epoch witness is open (pre-copy epochs commit after the vCPU resumed).
    pub fn epoch_record(&self, ram: &GuestMemoryMmap) -> Option<u64> {
        if self.epoch.lock().expect("epoch witness").is_none() {
            return None;
        }
        read_report_value(ram, NEWEST_RECORD_VALUE).ok()
    }

    /// Appends `epoch record` to the epoch witness once epoch `epoch` has committed.
    pub fn write_epoch(&self, epoch: u64, record: Option<u64>) {
        let mut w = self.epoch.lock().expect("epoch witness");
        if let (Some(f), Some(record)) = (w.as_mut(), record) {
            // A crash test's witness: a lost line only weakens the check, never fakes a pass.
            let _ = writeln!(f, "{epoch} {record}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};
    use vpm_abi::harness::{GUEST_RAM_SIZE, REPORT_GPA};

    #[test]
    fn lines_carry_the_report_values() {
        let dir = tempfile::tempdir().unwrap();
        let (d, e) = (dir.path().join("d"), dir.path().join("e"));
        let w = Witnesses::open(Some(&d), Some(&e)).unwrap();
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_RAM_SIZE as usize)])
            .unwrap();
        let values = std::mem::offset_of!(vpm_abi::harness::GuestReport, values) as u64;
        ram.write_obj(7u64, GuestAddress(REPORT_GPA + values + 8))
            .unwrap();
        ram.write_obj(9u64, GuestAddress(REPORT_GPA + values + 16))
            .unwrap();
        w.drain(&ram, 0);
        w.epoch(&ram, 3);
        assert_eq!(std::fs::read_to_string(&d).unwrap(), "7\n");
        assert_eq!(std::fs::read_to_string(&e).unwrap(), "3 9\n");
    }

    #[test]
    fn an_unopenable_witness_names_its_path() {
        let e = Witnesses::open(Some(Path::new("/nonexistent/dir/w")), None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/w"));
    }
}
