"""What the CT cache records of a case that fails: the error that names the file, and whether it is a fault
of the file (recorded, not retried) or of the moment (retried)."""

from medmoe.errors import InvalidInputError
from medmoe.seg.cache import _is_data_fault, _root_cause, failure_reason


def _chain(*errors: BaseException) -> BaseException:
    """errors[0] raised from errors[1] raised from ... (as MONAI wraps a reader's error)."""
    for outer, inner in zip(errors, errors[1:]):
        outer.__cause__ = inner
    return errors[0]


def test_a_medmoe_error_caused_by_an_os_error_is_reported_and_is_a_fault_of_the_file():
    err = _chain(RuntimeError("applying transform <LoadImaged>"),
                 InvalidInputError("ct.nii.gz: not a readable gzip file"), OSError("Not a gzipped file (b'ab')"))
    assert failure_reason(err) == "InvalidInputError: ct.nii.gz: not a readable gzip file"
    assert _is_data_fault(_root_cause(err))


def test_a_bare_os_error_is_reported_and_is_retried():
    err = _chain(RuntimeError("applying transform <LoadImaged>"), OSError("No space left on device"))
    assert failure_reason(err) == "OSError: No space left on device"
    assert not _is_data_fault(_root_cause(err))
