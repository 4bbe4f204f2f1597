"""Job names: exactly what ansible's async wrappers write, in ASCII digits only."""

from __future__ import annotations

import pytest
from winasync_eda.model import is_job_name


@pytest.mark.parametrize("name", ["j1.2", "j687253281342.17218", "j000000000000.0"])
def test_job_names(name: str) -> None:
    assert is_job_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "360874038559.4169",  # the old docs' sample without the j
        "j1234567890123.1",  # 13 digits
        "j1.2\n",
        "j1.2.tmp",
        "../j1.2",
        "j1.",
        "J1.2",
        "j\u0661\u0662\u0663.\u0664\u0660\u0660\u0660",  # Arabic-Indic digits: \d takes them
        "j\uff11\uff12.4000",  # fullwidth digits
    ],
)
def test_not_job_names(name: str) -> None:
    assert not is_job_name(name)
