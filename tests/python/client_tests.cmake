# pytest suites of the pure-Python package (python/zrollout: clients, Engine, adapters), one ctest
# case per file, label `python`. Included from tests/CMakeLists.txt.
#
# When the native extension is built, tests/python/CMakeLists.txt registers every
# tests/python/test_*.py (these suites included) and this file stops here; without it (no
# pybind11), these suites still run: they need only python3-zmq, python3-msgpack, python3-numpy and
# python3-pytest, and skip the parts that publish weights.
if(TARGET zr_python_native AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/python/CMakeLists.txt)
  return()
endif()
set(ZR_PYTEST_PYTHON "/usr/bin/python3" CACHE FILEPATH "Python that runs the pytest suites")
set(zr_client_suites test_client test_client_errors test_client_stream test_client_async test_engine
    test_integrations test_sglang_script test_engine_mpi)
foreach(suite IN LISTS zr_client_suites)
  add_test(NAME python_${suite}
           COMMAND ${ZR_PYTEST_PYTHON} -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_SOURCE_DIR}/python/${suite}.py
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/python)
  set_tests_properties(python_${suite} PROPERTIES
    LABELS python
    TIMEOUT 600
    ENVIRONMENT "PYTHONPATH=${CMAKE_SOURCE_DIR}/python;ZROLLOUT_BIN=$<TARGET_FILE:zrollout>;PYTHONDONTWRITEBYTECODE=1")
endforeach()
# The suite that starts mpirun: label mpi too, one mpirun job at a time (as tests/launch's).
set_tests_properties(python_test_engine_mpi PROPERTIES LABELS "python;mpi" RESOURCE_LOCK mpirun_cluster)
