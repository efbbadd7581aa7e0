"""Feature knowledge distillation: one class per KD method behind one interface.

`build_method(name, student_channels, teacher_channels, **options)` returns a `KDMethod`
(an nn.Module whose parameters are its adapters); calling it on paired lists of student
and teacher feature maps returns a scalar loss. Methods: at, fitnets, cc, fsp, sp, pkt,
nst, ft, none. `DEFAULT_TAPS` describes each method's default feature choice.
"""

from sftkd_cli.distill.methods import DEFAULT_TAPS, METHODS, KDMethod, build_method, method_options

__all__ = ["DEFAULT_TAPS", "METHODS", "KDMethod", "build_method", "method_options"]
