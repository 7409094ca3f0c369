//! Where a candle model's weights and activations live: the device and the float type.
//!
//! The CPU in f32 is the default and what every test and the tiny presets use. Real models
//! (0.5B student, 3B teacher) train on a GPU in bf16: build with the `cuda` feature of the
//! `train` crate (candle's CUDA backend) and pass `--device cuda --dtype bf16`. A build without
//! CUDA support refuses `cuda` by name instead of falling back to the CPU, so a long run never
//! starts on the wrong device unnoticed.
//!
//! The placement applies to HF safetensors folders. GGUF files are inference artefacts for
//! edge devices and always load on the CPU (or run in llama.cpp), whatever is asked.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Device and float type of a candle model.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Where the tensors live.
    pub device: Device,
    /// Float type of the weights and activations (losses and sampling still read f32).
    pub dtype: DType,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

impl Placement {
    /// Parse a device (`cpu`, `cuda`, `cuda:N`) and a float type (`f32`, `bf16`, `f16`, `f64`)
    /// as given on a command line. Opening a CUDA device needs a GPU and a build with CUDA
    /// support; either missing is an error that says which.
    pub fn parse(device: &str, dtype: &str) -> Result<Placement> {
        Ok(Placement {
            device: parse_device(device)?,
            dtype: parse_dtype(dtype)?,
        })
    }

    /// Whether this is the default placement (the CPU in f32).
    pub fn is_default(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    /// Short description for logs and reports, e.g. `cpu/f32` or `cuda:0/bf16`.
    pub fn describe(&self) -> String {
        let device = match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_string(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        };
        format!("{device}/{}", self.dtype.as_str())
    }
}

/// The float types a model can run in, by name.
const DTYPES: &[(&str, DType)] = &[
    ("f32", DType::F32),
    ("bf16", DType::BF16),
    ("f16", DType::F16),
    ("f64", DType::F64),
];

fn parse_dtype(s: &str) -> Result<DType> {
    DTYPES
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, d)| *d)
        .ok_or_else(|| {
            let names: Vec<&str> = DTYPES.iter().map(|(n, _)| *n).collect();
            Error::invalid(format!("unknown dtype {s:?} ({})", names.join(", ")))
        })
}

fn parse_device(s: &str) -> Result<Device> {
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown device {s:?} (cpu, cuda, cuda:N)"
                )));
            }
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::invalid(format!(
            "device {s:?}: this build has no CUDA support; rebuild with `--features cuda` \
             (needs the CUDA toolkit)"
        )));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::invalid(format!("device {s:?} could not be opened: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_refused_by_name() {
        let p = Placement::parse("cpu", "bf16").unwrap();
        assert!(p.device.is_cpu());
        assert_eq!(p.dtype, DType::BF16);
        assert_eq!(p.describe(), "cpu/bf16");
        assert!(!p.is_default());
        assert!(Placement::default().is_default());
        assert_eq!(Placement::default().describe(), "cpu/f32");

        let e = Placement::parse("cpu", "fp8").unwrap_err().to_string();
        assert!(e.contains("\"fp8\"") && e.contains("bf16"), "{e}");
        let e = Placement::parse("tpu", "f32").unwrap_err().to_string();
        assert!(e.contains("\"tpu\"") && e.contains("cuda:N"), "{e}");
        let e = Placement::parse("cuda:x", "f32").unwrap_err().to_string();
        assert!(e.contains("\"cuda:x\""), "{e}");
    }

    #[test]
    fn cuda_is_refused_by_name_without_cuda_support_or_without_the_gpu() {
        if candle_core::utils::cuda_is_available() {
            // No machine has a hundredth GPU: opening it fails and says so.
            let e = Placement::parse("cuda:99", "bf16").unwrap_err().to_string();
            assert!(e.contains("\"cuda:99\" could not be opened"), "{e}");
            return;
        }
        for d in ["cuda", "cuda:1"] {
            let e = Placement::parse(d, "bf16").unwrap_err().to_string();
            assert!(
                e.contains("no CUDA support") && e.contains("--features cuda"),
                "{e}"
            );
        }
    }
}
