//! `TERNARY_KERNEL` naming a family this CPU lacks makes the first use fail with an error that
//! names what the CPU has. Its own test binary, because the choice is made once per process.

use ternary::{try_active_kernel, Kernel, KernelError, TernaryMatrix};

#[test]
fn unavailable_kernel_request_is_an_error_at_first_use() {
    let missing = Kernel::ALL
        .into_iter()
        .find(|k| !k.is_available())
        .expect("no CPU has both x86 and ARM kernels");
    // Edition 2021: setting the variable is safe; this binary runs no other test that could race.
    std::env::set_var("TERNARY_KERNEL", missing.name());
    let err = try_active_kernel().unwrap_err();
    assert!(matches!(err, KernelError::Unavailable { requested, .. } if requested == missing));
    let message = err.to_string();
    assert!(
        message.contains(missing.name()) && message.contains("scalar"),
        "{message}"
    );
    let err = TernaryMatrix::from_ternary(&[0; 128], 1, 128, 1.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        message,
        "matrix construction reports the same error"
    );
    assert_eq!(ternary::active_kernel(), Kernel::Scalar);
}
