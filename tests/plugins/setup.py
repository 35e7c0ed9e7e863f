"""Worker and format plugins the integration tests install into their virtualenv."""
from setuptools import setup

setup(
    name="taskqueue-test-plugins",
    version="0.1.0",
    packages=["tqtest"],
    install_requires=["taskqueue"],
    entry_points={"worker.plugins": [
        "recorder = tqtest.recorder:Recorder.factory",
        "recorder2 = tqtest.recorder:Recorder.factory",
        # The specification's config names these two types.
        "worker1 = tqtest.recorder:Recorder.factory",
        "worker2 = tqtest.recorder:Recorder.factory",
        "brokenimport = tqtest.brokenimport:Worker.factory",
        "brokenfactory = tqtest.recorder:BrokenFactory.factory",
        "marker = tqtest.marker:Marker.factory",
        "crasher = tqtest.faulty:Crasher.factory",
        "hanger = tqtest.faulty:Hanger.factory",
        "traced = tqtest.traced:Traced.factory",   # needs opentelemetry-sdk
    ], "taskqueue.formats": [
        # The entry point's name is the content type the format reads.
        "application/x-tqtest-workflow+json = tqtest.formats:read_workflow",
        "application/x-tqtest-picky = tqtest.formats:read_picky",
        "application/x-tqtest-broken = tqtest.brokenformat:read",
    ]},
)
