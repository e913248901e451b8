//! Crash tests' witness files: lines the VMM appends when the guest acknowledges a drain, and when
//! an epoch commits, so a trial can check recovery against what was promised.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use vm_memory::GuestMemoryMmap;
use vpm_abi::harness::seq_words_gpa;

use super::VmmError;
use vm_memory::{Bytes, GuestAddress};

/// The open witness files of one VM (either may be absent).
#[derive(Debug, Default)]
pub struct Witnesses {
    drain: Mutex<Option<File>>,
    epoch: Mutex<Option<File>>,
    /// vCPUs whose sequence words the epoch witness records.
    vcpus: u32,
}

/// vCPU `vcpu`'s sequence-writer word `which` (0: acknowledged, 1: newest complete record).
fn seq_word(ram: &GuestMemoryMmap, vcpu: u32, which: usize) -> Option<u64> {
    ram.read_obj::<u64>(GuestAddress(seq_words_gpa(vcpu)[which]))
        .ok()
}

/// Appends one whole line with one `write` (formatting straight into the file would write it
/// piece by piece, and a kill between the pieces leaves a cut line that can read as another
/// valid one; readers also skip a last line without its newline). A crash test's witness: a
/// lost line only weakens the check, never fakes a pass.
fn append_line(f: &mut File, line: &str) {
    let _ = f.write_all(line.as_bytes());
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
            vcpus: 1,
        })
    }

    /// The same witnesses for a VM of `vcpus` vCPUs: each epoch line records every vCPU's
    /// newest complete record.
    pub fn for_vcpus(self, vcpus: u32) -> Witnesses {
        Witnesses {
            vcpus: vcpus.max(1),
            ..self
        }
    }

    /// Appends vCPU `vcpu`'s acknowledged sequence (`vpm_abi::harness::seq_words_gpa`) to the
    /// drain witness: `seq` for vCPU 0, `seq vcpu` for the others.
    pub fn drain(&self, ram: &GuestMemoryMmap, vcpu: u32) {
        let mut w = self.drain.lock().expect("witness");
        if let Some(f) = w.as_mut() {
            if let Some(seq) = seq_word(ram, vcpu, 0) {
                let line = if vcpu == 0 {
                    format!("{seq}\n")
                } else {
                    format!("{seq} {vcpu}\n")
                };
                append_line(f, &line);
            }
        }
    }

    /// Appends `epoch record…` to the epoch witness: every vCPU's newest complete record, read
    /// while the vCPUs are paused, is in the image epoch `epoch` committed.
    pub fn epoch(&self, ram: &GuestMemoryMmap, epoch: u64) {
        self.write_epoch(epoch, self.epoch_record(ram));
    }

    /// Every vCPU's newest complete record, read at an epoch's stop when an epoch witness is
    /// open (a staged epoch commits after the vCPUs resumed, so its line is read at the stop).
    pub fn epoch_record(&self, ram: &GuestMemoryMmap) -> Option<Vec<u64>> {
        if self.epoch.lock().expect("epoch witness").is_none() {
            return None;
        }
        (0..self.vcpus.max(1))
            .map(|v| seq_word(ram, v, 1))
            .collect()
    }

    /// Appends `epoch record…` (one record per vCPU) to the epoch witness once epoch `epoch` has
    /// committed.
    pub fn write_epoch(&self, epoch: u64, records: Option<Vec<u64>>) {
        let mut w = self.epoch.lock().expect("epoch witness");
        if let (Some(f), Some(records)) = (w.as_mut(), records) {
            let records: Vec<String> = records.iter().map(u64::to_string).collect();
            append_line(f, &format!("{epoch} {}\n", records.join(" ")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn lines_carry_every_vcpus_words() {
        let dir = tempfile::tempdir().unwrap();
        let (d, e) = (dir.path().join("d"), dir.path().join("e"));
        let w = Witnesses::open(Some(&d), Some(&e)).unwrap().for_vcpus(2);
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_RAM_SIZE as usize)])
            .unwrap();
        let [acked0, newest0] = seq_words_gpa(0);
        let [acked1, newest1] = seq_words_gpa(1);
        for (gpa, v) in [(acked0, 7u64), (newest0, 9), (acked1, 4), (newest1, 5)] {
            ram.write_obj(v, GuestAddress(gpa)).unwrap();
        }
        w.drain(&ram, 0);
        w.drain(&ram, 1);
        w.epoch(&ram, 3);
        assert_eq!(std::fs::read_to_string(&d).unwrap(), "7\n4 1\n");
        assert_eq!(std::fs::read_to_string(&e).unwrap(), "3 9 5\n");
    }

    #[test]
    fn an_unopenable_witness_names_its_path() {
        let e = Witnesses::open(Some(Path::new("/nonexistent/dir/w")), None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/w"));
    }
}
