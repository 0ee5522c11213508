//! Generates the ONNX protobuf messages from `proto/onnx.proto` (copied from the `onnx` Python
//! package 1.23, Apache-2.0) with rust-protobuf's pure-Rust parser: no `protoc` needed.

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/onnx.proto")
        .cargo_out_dir("onnx")
        .run_from_script();
}
