//! The GGUF container and nothing else: header, metadata key/value pairs, tensor infos,
//! alignment and bounds-checked tensor data, plus a writer for the same format.
//!
//! This module knows no model architecture. Every length read from the file is capped and
//! every tensor's byte range is checked against the file before anyone may touch it, so a
//! crafted or truncated file is refused with an error naming the key or tensor, never a panic.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::ops::Deref;
use std::path::Path;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";

// Caps against crafted files. They sit far above anything a real model needs: the 2B4T
// tokenizer has 280k merges and chat templates are a few KiB.
const MAX_STRING_BYTES: u64 = 64 << 20;
const MAX_ARRAY_ELEMENTS: u64 = 1 << 26;
const MAX_ARRAY_DEPTH: usize = 4;
const MAX_TENSORS: u64 = 1 << 20;
const MAX_METADATA_ENTRIES: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;

/// Why a GGUF file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: the first bytes are {found:?}, expected \"GGUF\"; check that the path points at a .gguf model")]
    WrongMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {version}; this reader handles versions 2 and 3 (little-endian); re-convert the model with a current llama.cpp or bitnet.cpp")]
    UnsupportedVersion { version: u32 },
    #[error("file is truncated at offset {offset} while reading {what}; the download is probably incomplete")]
    Truncated { offset: u64, what: String },
    #[error("{what} at offset {offset} has length {len}, above the limit of {limit}; the file is corrupt")]
    TooLong {
        what: String,
        offset: u64,
        len: u64,
        limit: u64,
    },
    #[error("metadata key {key:?} has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("metadata key {key:?} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")]
    TooDeep { key: String },
    #[error("string {what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey { key: String },
    #[error("tensor {tensor:?} appears twice")]
    DuplicateTensor { tensor: String },
    #[error("metadata key {key:?} must be {expected}, found {found}")]
    WrongValueType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("general.alignment = {alignment} is not a non-zero power of two")]
    BadAlignment { alignment: u64 },
    #[error("tensor {tensor:?} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}")]
    BadDims { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?} has shape {dims:?}, whose element count overflows or is zero")]
    BadShape { tensor: String, dims: Vec<u64> },
    #[error("unknown tensor type {type_id} for tensor {tensor:?}; supported: F32, F16, BF16, Q8_0, TQ1_0, TQ2_0, I2_S")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?} of type {ggml_type} has shape {dims:?}; its first dimension must be a multiple of {block}")]
    BlockMisfit {
        tensor: String,
        ggml_type: GgmlType,
        dims: Vec<u64>,
        block: u64,
    },
    #[error("tensor {tensor:?} starts at data offset {offset}, which is not a multiple of the alignment {alignment}")]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor {tensor:?} needs {needed} bytes at offset {offset} but only {remaining} remain in the file; the file is truncated or corrupt")]
    TensorOutOfBounds {
        tensor: String,
        needed: u64,
        offset: u64,
        remaining: u64,
    },
    #[error("tensor {tensor:?} was given {actual} bytes but type {ggml_type} with shape {dims:?} needs {expected}")]
    WrongTensorBytes {
        tensor: String,
        ggml_type: GgmlType,
        dims: Vec<u64>,
        expected: u64,
        actual: usize,
    },
}

/// A ggml tensor type this runtime can size (and, for some, run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    TQ1_0,
    TQ2_0,
    /// bitnet.cpp's 2-bit ternary type; the id is only meaningful in bitnet.cpp's ggml fork.
    I2S,
}

impl GgmlType {
    /// The id written in GGUF tensor infos.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
            GgmlType::TQ1_0 => 34,
            GgmlType::TQ2_0 => 35,
            GgmlType::I2S => 36,
        }
    }

    /// The type with this id, if it is one we know.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            34 => GgmlType::TQ1_0,
            35 => GgmlType::TQ2_0,
            36 => GgmlType::I2S,
            _ => return None,
        })
    }

    /// Elements per block along the first dimension, and bytes per block.
    fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::TQ1_0 => (256, 54),
            GgmlType::TQ2_0 => (256, 66),
            // I2_S is sized over the whole tensor (n/4 + 32-byte scale tail), see `tensor_bytes`;
            // 4 elements per byte, and the packing works on 128-element groups.
            GgmlType::I2S => (128, 32),
        }
    }

    /// Bytes a tensor of this type and shape occupies, or `None` when the shape does not fit
    /// the type's block size or the size overflows.
    pub fn tensor_bytes(self, dims: &[u64]) -> Option<u64> {
        let elements = element_count(dims)?;
        let (block, block_bytes) = self.block();
        if !dims[0].is_multiple_of(block) {
            return None;
        }
        let packed = (elements / block).checked_mul(block_bytes)?;
        match self {
            GgmlType::I2S => packed.checked_add(32),
            _ => Some(packed),
        }
    }

    fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::TQ1_0 => "TQ1_0",
            GgmlType::TQ2_0 => "TQ2_0",
            GgmlType::I2S => "I2_S",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn element_count(dims: &[u64]) -> Option<u64> {
    if dims.is_empty() {
        return None;
    }
    let mut n: u64 = 1;
    for &d in dims {
        if d == 0 {
            return None;
        }
        n = n.checked_mul(d)?;
    }
    Some(n)
}

/// One metadata value. Arrays may nest (GGUF allows arrays of arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// Element type id plus the elements; the id is kept so empty arrays round-trip.
    Array(ArrayValue),
}

/// A typed GGUF array.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayValue {
    element_type: u32,
    values: Vec<MetadataValue>,
}

impl ArrayValue {
    /// An array whose elements all have the type of `template` (its value is ignored).
    /// Returns `None` when some element has another type.
    pub fn new(template: &MetadataValue, values: Vec<MetadataValue>) -> Option<Self> {
        let element_type = template.type_id();
        if values.iter().any(|v| v.type_id() != element_type) {
            return None;
        }
        Some(ArrayValue {
            element_type,
            values,
        })
    }

    /// An array of strings.
    pub fn strings<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Self {
        ArrayValue {
            element_type: 8,
            values: values
                .into_iter()
                .map(|s| MetadataValue::String(s.into()))
                .collect(),
        }
    }

    /// An array of i32 (the type llama.cpp uses for `tokenizer.ggml.token_type`).
    pub fn i32s(values: impl IntoIterator<Item = i32>) -> Self {
        ArrayValue {
            element_type: 5,
            values: values.into_iter().map(MetadataValue::I32).collect(),
        }
    }

    pub fn values(&self) -> &[MetadataValue] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl MetadataValue {
    fn type_id(&self) -> u32 {
        match self {
            MetadataValue::U8(_) => 0,
            MetadataValue::I8(_) => 1,
            MetadataValue::U16(_) => 2,
            MetadataValue::I16(_) => 3,
            MetadataValue::U32(_) => 4,
            MetadataValue::I32(_) => 5,
            MetadataValue::F32(_) => 6,
            MetadataValue::Bool(_) => 7,
            MetadataValue::String(_) => 8,
            MetadataValue::Array(_) => 9,
            MetadataValue::U64(_) => 10,
            MetadataValue::I64(_) => 11,
            MetadataValue::F64(_) => 12,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetadataValue::U8(_) => "u8",
            MetadataValue::I8(_) => "i8",
            MetadataValue::U16(_) => "u16",
            MetadataValue::I16(_) => "i16",
            MetadataValue::U32(_) => "u32",
            MetadataValue::I32(_) => "i32",
            MetadataValue::U64(_) => "u64",
            MetadataValue::I64(_) => "i64",
            MetadataValue::F32(_) => "f32",
            MetadataValue::F64(_) => "f64",
            MetadataValue::Bool(_) => "bool",
            MetadataValue::String(_) => "string",
            MetadataValue::Array(_) => "array",
        }
    }

    /// The value as an unsigned integer, whatever integer type the writer chose.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float (either float type).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&ArrayValue> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Name, shape, type and placement of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (input/column) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Byte size implied by the type and shape.
    pub size: u64,
}

/// Parsed header, metadata and tensor directory of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub alignment: u64,
    /// Absolute file offset of the tensor data section.
    pub data_offset: u64,
    metadata: Vec<(String, MetadataValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufHeader {
    /// Parses and validates a whole GGUF image (header and the bounds of every tensor).
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        let mut reader = Reader { bytes, pos: 0 };
        let magic: [u8; 4] = reader.array("the magic bytes")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::WrongMagic { found: magic });
        }
        let version = reader.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count = reader.u64("the tensor count")?;
        let metadata_count = reader.u64("the metadata count")?;
        reader.check_count("tensor count", tensor_count, MAX_TENSORS, 8)?;
        reader.check_count("metadata count", metadata_count, MAX_METADATA_ENTRIES, 12)?;

        let mut metadata = Vec::with_capacity(metadata_count as usize);
        let mut metadata_index = HashMap::with_capacity(metadata_count as usize);
        for _ in 0..metadata_count {
            let key = reader.string("a metadata key")?;
            let type_id = reader.u32(&format!("the type of metadata key {key:?}"))?;
            let value = reader.value(&key, type_id, 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey { key });
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let value = &metadata[i].1;
                let alignment = value.as_u64().ok_or(GgufError::WrongValueType {
                    key: ALIGNMENT_KEY.to_string(),
                    expected: "an unsigned integer",
                    found: value.type_name(),
                })?;
                if alignment == 0 || !alignment.is_power_of_two() {
                    return Err(GgufError::BadAlignment { alignment });
                }
                alignment
            }
        };

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        let mut tensor_index = HashMap::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = reader.string("a tensor name")?;
            let n_dims = reader.u32(&format!("the dimension count of tensor {name:?}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadDims {
                    tensor: name,
                    n_dims,
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(reader.u64(&format!("the shape of tensor {name:?}"))?);
            }
            let type_id = reader.u32(&format!("the type of tensor {name:?}"))?;
            let offset = reader.u64(&format!("the offset of tensor {name:?}"))?;
            let ggml_type =
                GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
                    tensor: name.clone(),
                    type_id,
                })?;
            if element_count(&dims).is_none() {
                return Err(GgufError::BadShape { tensor: name, dims });
            }
            let size = ggml_type
                .tensor_bytes(&dims)
                .ok_or_else(|| GgufError::BlockMisfit {
                    tensor: name.clone(),
                    ggml_type,
                    dims: dims.clone(),
                    block: ggml_type.block().0,
                })?;
            if offset % alignment != 0 {
                return Err(GgufError::Misaligned {
                    tensor: name,
                    offset,
                    alignment,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor { tensor: name });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                size,
            });
        }

        let data_offset = align_up(reader.pos as u64, alignment);
        let file_len = bytes.len() as u64;
        for tensor in &tensors {
            let start = data_offset.checked_add(tensor.offset);
            let fits = start
                .and_then(|s| s.checked_add(tensor.size))
                .is_some_and(|end| end <= file_len);
            if !fits {
                let absolute = start.unwrap_or(u64::MAX);
                return Err(GgufError::TensorOutOfBounds {
                    tensor: tensor.name.clone(),
                    needed: tensor.size,
                    offset: absolute,
                    remaining: file_len.saturating_sub(absolute),
                });
            }
        }

        Ok(GgufHeader {
            version,
            alignment,
            data_offset,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
        })
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], GgufError> {
        if n > self.remaining() as u64 {
            return Err(GgufError::Truncated {
                offset: self.pos as u64,
                what: what.to_string(),
            });
        }
        let n = n as usize;
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses a count above `limit` or one that could not fit in the rest of the file,
    /// given that each item takes at least `min_item_bytes`.
    fn check_count(
        &self,
        what: &str,
        count: u64,
        limit: u64,
        min_item_bytes: u64,
    ) -> Result<(), GgufError> {
        let offset = self.pos as u64;
        if count > limit {
            return Err(GgufError::TooLong {
                what: what.to_string(),
                offset,
                len: count,
                limit,
            });
        }
        if count.saturating_mul(min_item_bytes) > self.remaining() as u64 {
            return Err(GgufError::Truncated {
                offset,
                what: format!("{count} items of the {what}"),
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(&format!("the length of {what}"))?;
        if len > MAX_STRING_BYTES {
            return Err(GgufError::TooLong {
                what: what.to_string(),
                offset: self.pos as u64 - 8,
                len,
                limit: MAX_STRING_BYTES,
            });
        }
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            what: what.to_string(),
            offset,
        })
    }

    fn value(&mut self, key: &str, type_id: u32, depth: usize) -> Result<MetadataValue, GgufError> {
        let what = || format!("the value of metadata key {key:?}");
        Ok(match type_id {
            0 => MetadataValue::U8(u8::from_le_bytes(self.array(&what())?)),
            1 => MetadataValue::I8(i8::from_le_bytes(self.array(&what())?)),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => MetadataValue::U32(u32::from_le_bytes(self.array(&what())?)),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => {
                let [b] = self.array(&what())?;
                MetadataValue::Bool(b != 0)
            }
            8 => MetadataValue::String(self.string(&what())?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooDeep {
                        key: key.to_string(),
                    });
                }
                let element_type = self.u32(&format!("the array type of metadata key {key:?}"))?;
                let count = self.u64(&format!("the array length of metadata key {key:?}"))?;
                let min_bytes = match element_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                self.check_count(
                    &format!("array of metadata key {key:?}"),
                    count,
                    MAX_ARRAY_ELEMENTS,
                    min_bytes,
                )?;
                let mut values = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    values.push(self.value(key, element_type, depth + 1)?);
                }
                MetadataValue::Array(ArrayValue {
                    element_type,
                    values,
                })
            }
            10 => MetadataValue::U64(u64::from_le_bytes(self.array(&what())?)),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array(&what())?)),
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    type_id,
                })
            }
        })
    }
}

/// The bytes of a GGUF file: memory-mapped from disk, or owned (tests, generated images).
enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// A GGUF file whose header is parsed and whose tensor ranges are known to be in bounds.
pub struct GgufFile {
    backing: Backing,
    header: GgufHeader,
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io_error = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only and private to this process. If another process
        // truncates or rewrites the model file while it is mapped, reads may fault or see new
        // bytes; model files are treated as immutable while loaded, as llama.cpp does.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
        let header = GgufHeader::parse(&map)?;
        Ok(GgufFile {
            backing: Backing::Mapped(map),
            header,
        })
    }

    /// Parses an in-memory GGUF image.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let header = GgufHeader::parse(&bytes)?;
        Ok(GgufFile {
            backing: Backing::Owned(bytes),
            header,
        })
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The bytes of one tensor (bounds were checked when the file was parsed).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.bytes()[start..start + info.size as usize]
    }

    fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mapped(map) => map,
            Backing::Owned(bytes) => bytes,
        }
    }
}

impl Deref for GgufFile {
    type Target = GgufHeader;
    fn deref(&self) -> &GgufHeader {
        &self.header
    }
}

/// Builds a GGUF version 3 image: metadata in insertion order, then tensors, each aligned.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a metadata entry.
    pub fn set(&mut self, key: impl Into<String>, value: MetadataValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor; `dims` in ggml order. The byte length must match the type and shape.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        if self.tensors.iter().any(|(t, _)| t.name == name) {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        let expected = ggml_type
            .tensor_bytes(dims)
            .ok_or_else(|| GgufError::BlockMisfit {
                tensor: name.clone(),
                ggml_type,
                dims: dims.to_vec(),
                block: ggml_type.block().0,
            })?;
        if expected != data.len() as u64 {
            return Err(GgufError::WrongTensorBytes {
                tensor: name,
                ggml_type,
                dims: dims.to_vec(),
                expected,
                actual: data.len(),
            });
        }
        let info = TensorInfo {
            name,
            dims: dims.to_vec(),
            ggml_type,
            offset: 0,
            size: expected,
        };
        self.tensors.push((info, data));
        Ok(self)
    }

    fn alignment(&self) -> Result<u64, GgufError> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, value)) => {
                let alignment = value.as_u64().ok_or(GgufError::WrongValueType {
                    key: ALIGNMENT_KEY.to_string(),
                    expected: "an unsigned integer",
                    found: value.type_name(),
                })?;
                if alignment == 0 || !alignment.is_power_of_two() {
                    return Err(GgufError::BadAlignment { alignment });
                }
                Ok(alignment)
            }
        }
    }

    /// Header, metadata and tensor infos, padded to the start of the data section.
    fn header_bytes(&self) -> Result<(Vec<u8>, u64), GgufError> {
        let alignment = self.alignment()?;
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        for (info, _) in &self.tensors {
            write_string(&mut out, &info.name);
            out.extend_from_slice(&(info.dims.len() as u32).to_le_bytes());
            for d in &info.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&info.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + info.size, alignment);
        }
        out.resize(align_up(out.len() as u64, alignment) as usize, 0);
        Ok((out, alignment))
    }

    /// Streams the image: header, then each tensor padded to the alignment.
    fn write_image(&self, out: &mut impl Write) -> std::io::Result<Result<(), GgufError>> {
        let (header, alignment) = match self.header_bytes() {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        out.write_all(&header)?;
        let padding = [0u8; 256];
        for (_, data) in &self.tensors {
            out.write_all(data)?;
            let pad = align_up(data.len() as u64, alignment) - data.len() as u64;
            let mut pad = pad as usize;
            while pad > 0 {
                let n = pad.min(padding.len());
                out.write_all(&padding[..n])?;
                pad -= n;
            }
        }
        Ok(Ok(()))
    }

    /// The complete file image.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut out = Vec::new();
        self.write_image(&mut out)
            .expect("writing to a Vec cannot fail")?;
        Ok(out)
    }

    /// Writes the image to `path` without building it in memory first.
    pub fn write_to(&self, path: &Path) -> Result<(), GgufError> {
        let io_error = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::create(path).map_err(io_error)?;
        let mut out = std::io::BufWriter::new(file);
        self.write_image(&mut out).map_err(io_error)??;
        let file = out.into_inner().map_err(|e| io_error(e.into_error()))?;
        file.sync_all().map_err(io_error)
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(s) => write_string(out, s),
        MetadataValue::Array(array) => {
            out.extend_from_slice(&array.element_type.to_le_bytes());
            out.extend_from_slice(&(array.values.len() as u64).to_le_bytes());
            for v in &array.values {
                write_value(out, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_type_writer() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.set("t.u8", MetadataValue::U8(200))
            .set("t.i8", MetadataValue::I8(-7))
            .set("t.u16", MetadataValue::U16(65000))
            .set("t.i16", MetadataValue::I16(-30000))
            .set("t.u32", MetadataValue::U32(4_000_000_000))
            .set("t.i32", MetadataValue::I32(-2_000_000_000))
            .set("t.u64", MetadataValue::U64(u64::MAX - 1))
            .set("t.i64", MetadataValue::I64(i64::MIN + 1))
            .set("t.f32", MetadataValue::F32(1.5e-5))
            .set("t.f64", MetadataValue::F64(-2.25e300))
            .set("t.bool", MetadataValue::Bool(true))
            .set("t.string", MetadataValue::String("héllo ✓".into()))
            .set(
                "t.strings",
                MetadataValue::Array(ArrayValue::strings(["a", "", "ĠHello"])),
            )
            .set("t.i32s", MetadataValue::Array(ArrayValue::i32s([1, -2, 3])))
            .set(
                "t.empty",
                MetadataValue::Array(ArrayValue::new(&MetadataValue::F64(0.0), vec![]).unwrap()),
            )
            .set(
                "t.nested",
                MetadataValue::Array(
                    ArrayValue::new(
                        &MetadataValue::Array(ArrayValue::i32s([])),
                        vec![
                            MetadataValue::Array(
                                ArrayValue::new(
                                    &MetadataValue::U8(0),
                                    vec![MetadataValue::U8(1), MetadataValue::U8(2)],
                                )
                                .unwrap(),
                            ),
                            MetadataValue::Array(ArrayValue::strings(["x"])),
                        ],
                    )
                    .unwrap(),
                ),
            );
        w.add_tensor(
            "a",
            &[3],
            GgmlType::F32,
            [1.0f32, 2.0, 3.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .unwrap();
        w.add_tensor("b", &[256, 2], GgmlType::TQ2_0, vec![7u8; 132])
            .unwrap();
        w.add_tensor("c", &[128, 4], GgmlType::I2S, vec![9u8; 128 + 32])
            .unwrap();
        w
    }

    #[test]
    fn every_metadata_type_and_tensor_round_trips() {
        let w = every_type_writer();
        let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert_eq!(file.version, 3);
        assert_eq!(file.metadata(), &w.metadata[..]);
        assert_eq!(file.get("t.u64").unwrap().as_u64(), Some(u64::MAX - 1));
        assert_eq!(file.get("t.string").unwrap().as_str(), Some("héllo ✓"));
        let a = file.tensor("a").unwrap();
        assert_eq!(a.dims, vec![3]);
        let floats: Vec<f32> = file
            .tensor_data(a)
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(floats, vec![1.0, 2.0, 3.0]);
        let b = file.tensor("b").unwrap();
        assert_eq!(b.offset % DEFAULT_ALIGNMENT, 0);
        assert_eq!(file.tensor_data(b), &[7u8; 132][..]);
        let c = file.tensor("c").unwrap();
        assert_eq!(c.ggml_type, GgmlType::I2S);
        assert_eq!(file.tensor_data(c), &[9u8; 160][..]);
    }

    #[test]
    fn custom_alignment_is_honoured_and_version_2_is_read() {
        let mut w = every_type_writer();
        w.set(ALIGNMENT_KEY, MetadataValue::U32(64));
        let mut bytes = w.to_bytes().unwrap();
        let file = GgufFile::from_bytes(bytes.clone()).unwrap();
        assert_eq!(file.alignment, 64);
        assert_eq!(file.data_offset % 64, 0);
        for t in file.tensors() {
            assert_eq!(t.offset % 64, 0, "{}", t.name);
        }
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(GgufHeader::parse(&bytes).unwrap().version, 2);
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let mut bytes = every_type_writer().to_bytes().unwrap();
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        let err = GgufHeader::parse(&bytes).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion { version: 1 }));
        bytes[0] = b'X';
        let err = GgufHeader::parse(&bytes).unwrap_err();
        assert!(err.to_string().contains("not a GGUF file"), "{err}");
    }

    #[test]
    fn unknown_tensor_type_names_the_tensor() {
        let mut w = GgufWriter::new();
        w.add_tensor("blk.0.weird", &[4], GgmlType::F32, vec![0; 16])
            .unwrap();
        let mut bytes = w.to_bytes().unwrap();
        // The type id sits right before the 8-byte offset at the end of the only tensor info.
        let info_end = 24 + 8 + "blk.0.weird".len() + 4 + 8 + 4 + 8;
        bytes[info_end - 12..info_end - 8].copy_from_slice(&99u32.to_le_bytes());
        let err = GgufHeader::parse(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown tensor type 99 for tensor \"blk.0.weird\"; supported: F32, F16, BF16, Q8_0, TQ1_0, TQ2_0, I2_S"
        );
    }

    #[test]
    fn truncated_tensor_data_names_tensor_and_sizes() {
        let bytes = every_type_writer().to_bytes().unwrap();
        let cut = &bytes[..bytes.len() - 10];
        let err = GgufHeader::parse(cut).unwrap_err();
        match err {
            GgufError::TensorOutOfBounds {
                tensor,
                needed,
                remaining,
                ..
            } => {
                assert_eq!(tensor, "c");
                assert_eq!(needed, 160);
                assert_eq!(remaining, 150);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn huge_lengths_are_refused_without_allocating() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"GGUF");
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        write_string(&mut bytes, "k");
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&6u32.to_le_bytes());
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = GgufHeader::parse(&bytes).unwrap_err();
        assert!(matches!(err, GgufError::TooLong { .. }), "{err}");
    }

    #[test]
    fn every_truncation_and_many_byte_flips_give_errors_not_panics() {
        let bytes = every_type_writer().to_bytes().unwrap();
        for len in 0..bytes.len() {
            assert!(GgufHeader::parse(&bytes[..len]).is_err(), "prefix {len}");
        }
        // Deterministic xorshift so a failure reproduces.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..4000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut damaged = bytes.clone();
            let at = (state % damaged.len() as u64) as usize;
            damaged[at] ^= (state >> 32) as u8 | 1;
            // Ok is fine (a flipped data byte is still a valid file); it just must not panic.
            let _ = GgufHeader::parse(&damaged);
        }
    }

    #[test]
    fn writer_refuses_wrong_sizes() {
        let mut w = GgufWriter::new();
        let err = w
            .add_tensor("x", &[256, 1], GgmlType::TQ1_0, vec![0; 10])
            .err()
            .unwrap();
        assert!(err.to_string().contains("needs 54"), "{err}");
        let err = w
            .add_tensor("y", &[100], GgmlType::TQ2_0, vec![0; 66])
            .err()
            .unwrap();
        assert!(err.to_string().contains("multiple of 256"), "{err}");
    }
}
