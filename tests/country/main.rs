//! Country fine-tuning (`percept finetune`), evaluation across class lists and `percept
//! compare`, and the provenance chain `percept inspect` prints. One test binary for the three:
//! each binary under tests/ links all of burn, so fewer of them build and link faster.

#[path = "../common/mod.rs"]
mod common;
mod compare;
mod finetune;
mod provenance_chain;
