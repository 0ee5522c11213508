//! PNG charts for evaluation reports (to be written).
