"""Fatal errors reach the CLI as one FlannelError, whatever trio wrapped them in."""

from __future__ import annotations

from pyflannel.daemon import first_flannel_error
from pyflannel.errors import InterfaceError, LeaseLost


def test_first_flannel_error_unwraps_nested_groups() -> None:
    lost = LeaseLost("subnet 10.5.1.0/24 was taken by 198.51.100.9")
    group = BaseExceptionGroup("outer", [KeyError("x"), ExceptionGroup("inner", [lost])])
    assert first_flannel_error(group) is lost


def test_first_flannel_error_plain_and_none() -> None:
    err = InterfaceError("Failed to find any valid interface to use")
    assert first_flannel_error(err) is err
    assert first_flannel_error(ExceptionGroup("g", [ValueError("v")])) is None
