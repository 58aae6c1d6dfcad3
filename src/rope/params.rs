//! The parameters a [`RopeTable`](super::RopeTable) was built from, kept so that an independent
//! implementation (the f64 oracle in [`crate::reference`]) can recompute the frequencies from their
//! definitions instead of reading the table's.

use alloc::vec::Vec;

use super::{RopeConfig, RopeScaling};

/// An owned copy of a [`RopeConfig`]: LongRoPE's borrowed factors are stored alongside.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Params {
    config: RopeConfig<'static>,
    short_factor: Vec<f64>,
    long_factor: Vec<f64>,
}

impl Params {
    pub(super) fn new(c: &RopeConfig<'_>) -> Params {
        let (mut short_factor, mut long_factor) = (Vec::new(), Vec::new());
        let scaling: RopeScaling<'static> = match c.scaling {
            RopeScaling::Default => RopeScaling::Default,
            RopeScaling::Linear { factor } => RopeScaling::Linear { factor },
            RopeScaling::DynamicNtk { factor, original_max_position } => {
                RopeScaling::DynamicNtk { factor, original_max_position }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => RopeScaling::Yarn {
                factor,
                original_max_position,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            },
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }
            }
            RopeScaling::LongRope {
                short_factor: s,
                long_factor: l,
                original_max_position,
                factor,
                attention_factor,
            } => {
                short_factor = s.to_vec();
                long_factor = l.to_vec();
                RopeScaling::LongRope {
                    short_factor: &[],
                    long_factor: &[],
                    original_max_position,
                    factor,
                    attention_factor,
                }
            }
        };
        let config = RopeConfig {
            head_dim: c.head_dim,
            rotary_dim: c.rotary_dim,
            base: c.base,
            pairing: c.pairing,
            scaling,
            max_position_embeddings: c.max_position_embeddings,
        };
        Params { config, short_factor, long_factor }
    }

    /// The configuration, borrowing LongRoPE's factors from `self`.
    pub(super) fn config(&self) -> RopeConfig<'_> {
        let scaling = match self.config.scaling {
            RopeScaling::LongRope { original_max_position, factor, attention_factor, .. } => RopeScaling::LongRope {
                short_factor: &self.short_factor,
                long_factor: &self.long_factor,
                original_max_position,
                factor,
                attention_factor,
            },
            other => other,
        };
        RopeConfig { scaling, ..self.config }
    }
}
