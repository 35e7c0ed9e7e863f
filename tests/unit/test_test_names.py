"""Every test module has a name of its own across tests/ and the example plugins' tests.

pytest imports a test module by its file name alone (the tests are no packages:
each directory goes on sys.path), so two test_x.py in tests/unit and
tests/integration stop the whole run at collection ("import file mismatch"),
while either one run alone passes.
"""
import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parents[1]
#: The example plugins' own tests run in the same session (pytest.ini testpaths).
EXAMPLES = TESTS.parent / "examples"


def test_no_two_test_modules_share_a_name():
    places = collections.defaultdict(list)
    for path in [*TESTS.rglob("test_*.py"), *EXAMPLES.rglob("test_*.py")]:
        where = path.relative_to(TESTS.parent)
        if "build" not in where.parts:   # a plugin's setup.py build tree
            places[path.name].append(str(where))
    assert len(places) > 50   # found the tests at all
    assert {name: where for name, where in places.items() if len(where) > 1} == {}
