//! The library example (`examples/own_target.rs`) trains on its own target and reaches an
//! accurate log Z: the numbers it prints are checked here.

#[path = "../examples/own_target.rs"]
#[allow(dead_code)]
mod own_target;

#[test]
fn own_target_example_estimates_log_z() {
    let s = own_target::run(400).unwrap();
    eprintln!(
        "log Z error {:.4}, ESS {:.3}, W2 {:.4}",
        s.log_z_error, s.ess, s.w2
    );
    assert!(s.log_z_error < 0.05, "log Z error {}", s.log_z_error);
    assert!(s.ess > 0.5, "ESS {}", s.ess);
    assert!(s.w2 < 0.3, "W2 {}", s.w2);
    assert!(s.log_z_elbo <= s.log_z_is + 1e-6);
}
