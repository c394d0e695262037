//! `gen-model`: writes a random-weight BitNet GGUF file for tests, benchmarks and rehearsals.
//!
//! `gen-model --out FILE --format i2s|tq2_0|tq1_0 --size tiny|2b4t [--seed N] [--embedding f16|f32]`

use std::path::PathBuf;
use std::process::ExitCode;

use bitnet::generate::{EmbeddingType, SyntheticModel, SyntheticShape};
use bitnet::WeightFormat;

const USAGE: &str = "usage: gen-model --out FILE --format i2s|tq2_0|tq1_0 --size tiny|2b4t [--seed N] [--embedding f16|f32]";

struct Args {
    out: PathBuf,
    model: SyntheticModel,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = None;
    let mut format = None;
    let mut shape = None;
    let mut seed = 1u64;
    let mut embedding = EmbeddingType::F16;
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value)),
            "--format" => {
                format = Some(match value.as_str() {
                    "i2s" | "i2_s" => WeightFormat::I2S,
                    "tq2_0" => WeightFormat::Tq2_0,
                    "tq1_0" => WeightFormat::Tq1_0,
                    other => return Err(format!("--format {other:?}: use i2s, tq2_0 or tq1_0")),
                })
            }
            "--size" => {
                shape = Some(match value.as_str() {
                    "tiny" => SyntheticShape::tiny(),
                    "2b4t" => SyntheticShape::bitnet_2b4t(),
                    other => return Err(format!("--size {other:?}: use tiny or 2b4t")),
                })
            }
            "--seed" => {
                seed = value
                    .parse()
                    .map_err(|_| format!("--seed {value:?}: use a non-negative integer"))?
            }
            "--embedding" => {
                embedding = match value.as_str() {
                    "f16" => EmbeddingType::F16,
                    "f32" => EmbeddingType::F32,
                    other => return Err(format!("--embedding {other:?}: use f16 or f32")),
                }
            }
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    let format = format.ok_or_else(|| format!("--format is required\n{USAGE}"))?;
    let shape = shape.ok_or_else(|| format!("--size is required\n{USAGE}"))?;
    let mut model = SyntheticModel::tiny(format, seed);
    model.shape = shape;
    model.embedding = embedding;
    Ok(Args { out, model })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match args.model.write(&args.out) {
        Ok(()) => {
            println!(
                "wrote {} ({}, {})",
                args.out.display(),
                args.model.architecture(),
                args.model.format
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}
