//! Byte-level tests of the GGUF ternary formats: hand-made blocks, round trips, refusals, and
//! robustness against arbitrary bytes.

mod common;

use common::Rng;
use ternary::{decode, encode, ternarize_absmean, FormatError, TernaryMatrix, WeightFormat};

/// 128 zeros except the listed (index, value) pairs.
fn sparse(len: usize, set: &[(usize, i8)]) -> Vec<i8> {
    let mut v = vec![0i8; len];
    for &(i, value) in set {
        v[i] = value;
    }
    v
}

#[test]
fn i2s_hand_made_block() {
    // Byte 0 holds elements 0, 32, 64, 96 from the top bits down; byte 1 elements 1, 33, 65, 97.
    // Codes: -1 = 00, 0 = 01, +1 = 10.
    let values = sparse(
        128,
        &[(0, 1), (32, -1), (96, 1), (1, -1), (33, 1), (65, -1)],
    );
    let mut expected = vec![0x55u8; 32];
    expected[0] = 0b10_00_01_10;
    expected[1] = 0b00_10_00_01;
    expected.extend_from_slice(&[0x00, 0x00, 0x00, 0x3f]); // 0.5f32, little-endian
    expected.extend_from_slice(&[0u8; 28]);
    let bytes = encode(WeightFormat::I2S, &values, 1, 128, 0.5).unwrap();
    assert_eq!(bytes, expected);
    let decoded = decode(WeightFormat::I2S, &expected, 1, 128).unwrap();
    assert_eq!(decoded.values, values);
    assert_eq!(decoded.scales, vec![0.5]);
    assert_eq!(decoded.block, 128);
}

#[test]
fn tq2_0_hand_made_block() {
    // Group 0: byte m holds elements m, 32+m, 64+m, 96+m from the LOW bits up. Group 1 starts at byte 32.
    let values = sparse(256, &[(0, 1), (32, -1), (96, 1), (129, -1)]);
    let mut expected = vec![0x55u8; 64];
    expected[0] = 0b10_01_00_10;
    expected[33] = 0b01_01_01_00;
    expected.extend_from_slice(&[0x00, 0x38]); // f16 0.5
    let bytes = encode(WeightFormat::Tq2_0, &values, 1, 256, 0.5).unwrap();
    assert_eq!(bytes, expected);
    let decoded = decode(WeightFormat::Tq2_0, &expected, 1, 256).unwrap();
    assert_eq!(decoded.values, values);
    assert_eq!(decoded.scales, vec![0.5]);
    assert_eq!(decoded.block, 256);
}

#[test]
fn tq1_0_hand_made_block() {
    // qs[0..32]: elements m + 32n, n = 0 the most significant trit; all-zero = 121 -> ceil(121·256/243) = 128.
    // qs[0] with element 0 = +1: 202 -> 213. qs[32..48]: elements 160 + m + 16n; qs[33] with element 161 = -1: 40 -> 43.
    // qh[j]: elements 240 + j + 4m, times 3; all-zero 40·3 = 120 -> 127; qh[3] with element 255 = +1: 41·3 = 123 -> 130.
    let values = sparse(256, &[(0, 1), (161, -1), (255, 1)]);
    let mut expected = vec![128u8; 48];
    expected[0] = 213;
    expected[33] = 43;
    expected.extend_from_slice(&[127, 127, 127, 130]);
    expected.extend_from_slice(&[0x00, 0x38]);
    let bytes = encode(WeightFormat::Tq1_0, &values, 1, 256, 0.5).unwrap();
    assert_eq!(bytes, expected);
    let decoded = decode(WeightFormat::Tq1_0, &expected, 1, 256).unwrap();
    assert_eq!(decoded.values, values);
    assert_eq!(decoded.scales, vec![0.5]);
}

#[test]
fn all_zero_tq_blocks_store_zero_scale_like_llama_cpp() {
    let mut values = vec![0i8; 512];
    values[300] = 1;
    for format in [WeightFormat::Tq2_0, WeightFormat::Tq1_0] {
        let decoded = decode(
            format,
            &encode(format, &values, 1, 512, 0.25).unwrap(),
            1,
            512,
        )
        .unwrap();
        assert_eq!(decoded.scales, vec![0.0, 0.25], "{format}");
    }
}

#[test]
fn round_trips_for_random_shapes() {
    let mut rng = Rng::new(1);
    for format in [WeightFormat::I2S, WeightFormat::Tq2_0, WeightFormat::Tq1_0] {
        for _ in 0..20 {
            let rows = 1 + rng.below(9);
            let cols = format.block_len() * (1 + rng.below(5));
            let values = rng.ternary(rows * cols);
            let bytes = encode(format, &values, rows, cols, 0.75).unwrap();
            assert_eq!(bytes.len(), format.tensor_bytes(rows, cols).unwrap());
            let decoded = decode(format, &bytes, rows, cols).unwrap();
            assert_eq!(decoded.values, values, "{format} {rows}x{cols}");
            assert!(decoded.scales.iter().all(|&s| s == 0.75 || s == 0.0));
        }
    }
}

#[test]
fn sizes_and_type_ids_match_ggml() {
    assert_eq!(
        WeightFormat::I2S.tensor_bytes(2560, 2560).unwrap(),
        2560 * 2560 / 4 + 32
    );
    assert_eq!(
        WeightFormat::Tq2_0.tensor_bytes(2560, 6912).unwrap(),
        2560 * 27 * 66
    );
    assert_eq!(
        WeightFormat::Tq1_0.tensor_bytes(6912, 2560).unwrap(),
        6912 * 10 * 54
    );
    for format in [WeightFormat::I2S, WeightFormat::Tq2_0, WeightFormat::Tq1_0] {
        assert_eq!(
            WeightFormat::from_ggml_type_id(format.ggml_type_id()),
            Some(format)
        );
    }
    assert_eq!(WeightFormat::I2S.ggml_type_id(), 36);
    assert_eq!(WeightFormat::Tq2_0.ggml_type_id(), 35);
    assert_eq!(WeightFormat::Tq1_0.ggml_type_id(), 34);
    assert_eq!(WeightFormat::from_ggml_type_id(1), None);
}

#[test]
fn bad_shapes_and_lengths_are_refused_with_sizes() {
    let err = WeightFormat::Tq2_0.tensor_bytes(4, 300).unwrap_err();
    assert!(matches!(
        err,
        FormatError::ColsNotMultiple {
            cols: 300,
            block: 256,
            ..
        }
    ));
    assert!(
        err.to_string().contains("300") && err.to_string().contains("256"),
        "{err}"
    );

    let err = TernaryMatrix::from_gguf(WeightFormat::I2S, &[0u8; 100], 2, 128).unwrap_err();
    assert_eq!(
        err,
        FormatError::ByteLength {
            format: "I2_S",
            rows: 2,
            cols: 128,
            expected: 96,
            actual: 100
        }
    );
    assert!(
        err.to_string().contains("96") && err.to_string().contains("100"),
        "{err}"
    );

    let err = encode(WeightFormat::I2S, &[0i8; 10], 1, 128, 1.0).unwrap_err();
    assert!(
        err.to_string().contains("128") && err.to_string().contains("10"),
        "{err}"
    );

    let mut values = vec![0i8; 128];
    values[5] = 2;
    let err = encode(WeightFormat::I2S, &values, 1, 128, 1.0).unwrap_err();
    assert_eq!(
        err,
        FormatError::NotTernary {
            row: 0,
            col: 5,
            value: 2
        }
    );

    assert!(matches!(
        WeightFormat::I2S.tensor_bytes(0, 128),
        Err(FormatError::EmptyShape { .. })
    ));
    assert!(matches!(
        encode(WeightFormat::I2S, &[0; 128], 1, 128, f32::NAN),
        Err(FormatError::InvalidScale { .. })
    ));
}

#[test]
fn unused_code_3_is_reported_at_its_element() {
    let mut bytes = encode(WeightFormat::I2S, &vec![0i8; 256], 2, 128, 1.0).unwrap();
    bytes[32 + 7] = 0b01_11_01_01; // row 1, element 32 + 7
    let err = decode(WeightFormat::I2S, &bytes, 2, 128).unwrap_err();
    assert_eq!(
        err,
        FormatError::InvalidCode {
            format: "I2_S",
            byte: 39,
            row: 1,
            col: 39
        }
    );

    let mut bytes = encode(WeightFormat::Tq2_0, &vec![0i8; 256], 1, 256, 1.0).unwrap();
    bytes[40] = 0b01_01_11_01; // group 1, byte 8, bits 3-2: element 128 + 32 + 8
    let err = TernaryMatrix::from_gguf(WeightFormat::Tq2_0, &bytes, 1, 256).unwrap_err();
    assert_eq!(
        err,
        FormatError::InvalidCode {
            format: "TQ2_0",
            byte: 40,
            row: 0,
            col: 168
        }
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::new(7);
    for i in 0..3000 {
        let format = rng.pick(&[WeightFormat::I2S, WeightFormat::Tq2_0, WeightFormat::Tq1_0]);
        let rows = rng.below(5);
        let cols = rng.pick(&[0, 64, 128, 256, 384, 512]);
        let exact = format.tensor_bytes(rows, cols).unwrap_or(0);
        let len = if i % 3 == 0 { rng.below(600) } else { exact };
        let bytes = rng.bytes(len);
        let _ = decode(format, &bytes, rows, cols);
        if let Ok(matrix) = TernaryMatrix::from_gguf(format, &bytes, rows, cols) {
            let x = ternary::QuantizedActivations::quantize(&rng.floats(cols), cols);
            let mut out = vec![0.0; rows];
            matrix.matmul_reference(&x, &mut out);
        }
    }
}

#[test]
fn absmean_ternarisation_matches_bitnet() {
    let (values, scale) = ternarize_absmean(&[0.9, -0.1, 0.5, -2.0]);
    // mean |w| = 0.875: 0.9/s = 1.03 -> 1, -0.11 -> 0, 0.571 -> 1, -2.29 -> -1.
    assert_eq!(scale, 0.875);
    assert_eq!(values, vec![1, 0, 1, -1]);
    let (values, scale) = ternarize_absmean(&[0.0; 4]);
    assert_eq!((values, scale), (vec![0; 4], 1e-5));
}
