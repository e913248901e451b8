//! Where the guest-visible content of a tenant's pages comes from when the pool makes them
//! durable: the VMM's DRAM tier and PM working copies, or a test's in-memory image.

use vpm_abi::PAGE_SIZE;

use super::media::Home;

/// Why a [`PageSource`] could not show a page.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The page lies beyond the end of an in-memory image.
    #[error("page {vpn} is beyond a {len}-byte image")]
    PageBeyondImage {
        /// Page asked for.
        vpn: u64,
        /// Bytes in the image.
        len: u64,
    },
    /// Reading the page from its backing store failed.
    #[error("reading the page from its backing store: {0}")]
    Io(#[source] std::io::Error),
}

/// The current (guest-visible) content of a tenant's pages.
pub trait PageSource {
    /// Calls `f` with the current content of page `vpn` (`PAGE_SIZE` bytes), in place where
    /// possible.
    fn with_page(&self, vpn: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), SourceError>;

    /// A fresh home this source already filled with the whole page `vpn` (a home from
    /// `Pool::reserve_home`, written with streaming stores and fenced): the commit installs it
    /// instead of reading the page with `with_page`. `None`, the default, for every other page.
    fn written_home(&self, vpn: u64) -> Option<Home> {
        let _ = vpn;
        None
    }
}

/// An image of the whole vPM: page `vpn` is at byte `vpn * PAGE_SIZE`.
impl PageSource for [u8] {
    fn with_page(&self, vpn: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), SourceError> {
        let page = PAGE_SIZE as usize;
        let src = usize::try_from(vpn)
            .ok()
            .and_then(|v| v.checked_mul(page))
            .and_then(|at| self.get(at..at.checked_add(page)?))
            .ok_or(SourceError::PageBeyondImage {
                vpn,
                len: self.len() as u64,
            })?;
        f(src);
        Ok(())
    }
}

impl PageSource for Vec<u8> {
    fn with_page(&self, vpn: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), SourceError> {
        self.as_slice().with_page(vpn, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_shows_its_pages_and_refuses_pages_beyond_it() {
        let page = PAGE_SIZE as usize;
        let mut img = vec![0u8; 2 * page];
        img[page] = 7;
        let mut first = None;
        img.with_page(1, &mut |p| first = Some((p.len(), p[0])))
            .unwrap();
        assert_eq!(first, Some((page, 7)));
        for vpn in [2, u64::MAX] {
            let err = img.with_page(vpn, &mut |_| panic!("no page")).unwrap_err();
            assert!(
                matches!(err, SourceError::PageBeyondImage { vpn: v, len } if v == vpn && len == 2 * PAGE_SIZE),
                "{err}"
            );
        }
    }
}
