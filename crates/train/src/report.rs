//! Markdown and HTML evaluation reports (to be written).
