"""sftkd: student-friendly teacher knowledge distillation for MRI reconstruction."""

__version__ = "0.1.0"
