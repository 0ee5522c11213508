//! The frame being drawn: the canvas, the camera, the scene and the lamp halos to add once
//! every object is drawn. Shared by the scene's ground and walls (`render`) and its objects
//! (`objects`).

use super::canvas::{Canvas, Col};
use super::layout::{Cam, Scene};

/// A light halo to add at the end, if the lamp at its centre is still visible.
pub(crate) struct Glow {
    pub x: f32,
    pub y: f32,
    pub r: f32,
    pub col: Col,
    pub strength: f32,
    /// Object id that must still own the centre pixel.
    pub owner: u16,
}

/// Everything a drawing routine needs.
pub(crate) struct Ctx<'a> {
    pub cv: Canvas,
    pub cam: Cam,
    pub scene: &'a Scene,
    pub glows: Vec<Glow>,
}
