"""joblib's own test modules run against cyjob: one line per module.

Each entry names a module of the installed ``joblib.test`` package and the
public names to rebind in its namespace to cyjob's before its tests run
(``"Name"`` takes ``cyjob.Name``; ``"Name=package.module:attr"`` any other
object).  The module is read from the installed joblib at test time, never
copied here.  Each module also needs ``excluded/<module>.txt`` (tests of
joblib's private internals, each with the reason) and may have
``known_failures/<module>.txt`` (real cyjob bugs, run as strict xfails until
fixed).  conftest.py does the rest.
"""

SUITES = {
    "test_parallel": ("Parallel", "delayed", "parallel_config", "parallel_backend",
                      "register_parallel_backend", "cpu_count", "effective_n_jobs"),
    "test_hashing": ("hash", "Memory"),
    "test_memory": ("Memory", "MemorizedResult", "hash", "expires_after",
                    "register_store_backend", "Parallel", "delayed",
                    "MemorizedFunc=cyjob.cache.memory:MemorizedFunc",
                    "NotMemorizedFunc=cyjob.cache.memory:NotMemorizedFunc",
                    "NotMemorizedResult=cyjob.cache.memory:NotMemorizedResult"),
    "test_memory_async": ("Memory", "MemorizedResult",
                          "AsyncMemorizedFunc=cyjob.cache.memory:AsyncMemorizedFunc",
                          "AsyncNotMemorizedFunc=cyjob.cache.memory:AsyncNotMemorizedFunc",
                          "NotMemorizedResult=cyjob.cache.memory:NotMemorizedResult"),
    # numpy_pickle.dump / numpy_pickle.load are joblib.dump / joblib.load:
    # the module's numpy_pickle becomes cyjob.persist.
    "test_numpy_pickle": ("numpy_pickle=cyjob:persist", "register_compressor"),
}
