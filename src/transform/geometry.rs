//! Where the output comes from in the source and how big it is: the fit modes, the crop, and the
//! DCT scale a JPEG decode may use. Pure arithmetic on sizes.

use image::metadata::Orientation;

use super::*;

/// The resize, in upright source coordinates.
#[derive(Debug, PartialEq)]
pub(crate) struct Geometry {
    /// The part of the source used: left, top, width, height.
    pub(crate) crop: (f64, f64, f64, f64),
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// Output pixels per source pixel (at most 1 when shrinking), for choosing a DCT scale.
    pub(crate) scale: f64,
}

pub(crate) fn geometry(sw: u32, sh: u32, plan: &Plan) -> Geometry {
    let (fw, fh) = (f64::from(sw), f64::from(sh));
    let full = (0.0, 0.0, fw, fh);
    let round = |v: f64| (v.round() as u32).max(1);
    let never_enlarge = plan.fit == Fit::Inside;
    let (crop, w, h) = match (plan.width, plan.height) {
        (None, None) => (full, sw, sh),
        (Some(w), None) => {
            let w = if never_enlarge { w.min(sw) } else { w };
            (full, w, round(fh * f64::from(w) / fw))
        }
        (None, Some(h)) => {
            let h = if never_enlarge { h.min(sh) } else { h };
            (full, round(fw * f64::from(h) / fh), h)
        }
        (Some(w), Some(h)) => match plan.fit {
            Fit::Fill => (full, w, h),
            Fit::Cover => {
                let (tw, th) = (f64::from(w), f64::from(h));
                if fw / fh > tw / th {
                    let cw = fh * tw / th;
                    (((fw - cw) / 2.0, 0.0, cw, fh), w, h)
                } else {
                    let ch = fw * th / tw;
                    ((0.0, (fh - ch) / 2.0, fw, ch), w, h)
                }
            }
            Fit::Contain | Fit::Inside => {
                let mut s = (f64::from(w) / fw).min(f64::from(h) / fh);
                if never_enlarge {
                    s = s.min(1.0);
                }
                (full, round(fw * s), round(fh * s))
            }
        },
    };
    let scale = (f64::from(w) / crop.2).max(f64::from(h) / crop.3);
    Geometry {
        crop,
        width: w,
        height: h,
        scale,
    }
}

pub(crate) fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}
