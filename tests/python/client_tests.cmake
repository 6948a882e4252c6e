# pytest suites of the pure-Python package (python/zrollout: clients, Engine, adapters), one ctest
# case per file, label `python`. Included from tests/CMakeLists.txt; the native module's suites
# register themselves separately. Python is Debian's /usr/bin/python3 (python3-pytest,
# python3-zmq, python3-msgpack, python3-numpy); the package is imported from the source tree and
# `zrollout serve` is this build's binary.
set(ZR_PYTEST_PYTHON "/usr/bin/python3" CACHE FILEPATH "Python that runs the pytest suites")
set(zr_client_suites test_client test_client_errors test_client_stream test_client_async test_engine test_integrations)
foreach(suite IN LISTS zr_client_suites)
  add_test(NAME python.${suite}
           COMMAND ${ZR_PYTEST_PYTHON} -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_SOURCE_DIR}/python/${suite}.py
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/python)
  set_tests_properties(python.${suite} PROPERTIES
    LABELS python
    TIMEOUT 300
    ENVIRONMENT "PYTHONPATH=${CMAKE_SOURCE_DIR}/python;ZROLLOUT_BIN=$<TARGET_FILE:zrollout>;PYTHONDONTWRITEBYTECODE=1")
endforeach()
