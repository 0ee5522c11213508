//! The letterbox geometry is percept-infer's (inference letterboxes with it too); labelled boxes
//! map through it as [`Corners`].

pub use percept_infer::{Corners, Letterbox, PAD_VALUE};

use crate::sample::BoxLabel;

impl Corners for BoxLabel {
    fn corners(&self) -> [f32; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }

    fn with_corners(&self, c: [f32; 4]) -> Self {
        BoxLabel::new(self.class, c)
    }
}
