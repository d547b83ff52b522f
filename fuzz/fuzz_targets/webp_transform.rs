//! The whole pipeline on Webp-shaped bytes, admitted by its budgeted peak as the service does
//! (see `budgeted.rs`): an image or a typed error, never a panic, never past its budget.
#![no_main]
use imgmirror::transform::Sniffed;
use libfuzzer_sys::fuzz_target;

#[path = "budgeted.rs"]
mod budgeted;

fuzz_target!(|data: &[u8]| budgeted::run(data, Sniffed::Webp));
