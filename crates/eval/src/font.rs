//! The font of all chart and overlay text: DejaVu Sans (the `dejavu` crate), compiled into the
//! binary, so no font files, system fonts or fontconfig are needed.

use std::sync::{Once, OnceLock};

use ab_glyph::{Font, FontRef, ScaleFont};

/// The family name charts give plotters; `register` binds it to DejaVu Sans.
pub const FAMILY: &str = "sans-serif";

/// DejaVu Sans, parsed once.
pub(crate) fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(dejavu::sans::regular()).expect("DejaVu Sans is a valid font")
    })
}

/// Registers DejaVu Sans with plotters as [`FAMILY`] (once per process).
pub(crate) fn register() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        let registered = plotters::style::register_font(
            FAMILY,
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        );
        assert!(registered.is_ok(), "DejaVu Sans is a valid font");
    });
}

/// The width of `text` at `size` pixels (ab_glyph's scale: ascent to descent), as plotters
/// measures it: advances plus kerning.
pub(crate) fn text_width(text: &str, size: f32) -> f32 {
    let font = font().as_scaled(size);
    let mut width = 0.0;
    let mut previous = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = previous {
            width += font.kern(p, id);
        }
        width += font.h_advance(id);
        previous = Some(id);
    }
    width
}
