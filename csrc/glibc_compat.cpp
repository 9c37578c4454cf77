// What lets one wheel run on glibc 2.28 (manylinux_2_28: RHEL 8, Ubuntu 20.04, the tag torch's wheels
// carry) although it is built here, on glibc 2.36 with gcc 12's libstdc++. Linked into both modules.
//
// A module's references take the newest version of each symbol the build machine has: glibc 2.34
// moved the pthread, dl, semaphore and shm functions into libc with a new version (the static
// cudart calls about 45 of them, the thread pool a few), 2.29 gave exp and log new ones, and gcc
// 11-12's headers call libstdc++ functions that gcc 8's library lacks. setup.py links with
// `-Wl,--wrap=<name>` for every name wrapped below (it reads this file), which sends every
// reference to <name>, ours and the static cudart's, to `__wrap_<name>`:
//   - EO_OLD_VERSION: a jump to the same function's older version, which every glibc since then
//     still exports. Before 2.34 those functions lived in libpthread, libdl and librt (the dynamic
//     linker finds a versioned symbol in whichever loaded library defines it), so setup.py makes
//     them NEEDED;
//   - the rest: the function rebuilt from older exported ones (below, each says how).
// `make wheel` repairs with --plat manylinux_2_28, which fails on any symbol newer than glibc 2.28
// or gcc 8's libstdc++ (GLIBCXX_3.4.24, CXXABI_1.3.11), naming it: add it here.
#if defined(__x86_64__) && defined(__linux__)
#include <new>

#define EO_OLD_VERSION(name, version)                  \
  __asm__(".pushsection .text\n"                       \
          ".symver eo_old_" #name ", " #name "@" version "\n" \
          ".globl __wrap_" #name "\n"                  \
          ".hidden __wrap_" #name "\n"                 \
          ".type __wrap_" #name ", @function\n"        \
          "__wrap_" #name ":\n"                        \
          "  jmp eo_old_" #name "@PLT\n"               \
          ".popsection\n");

// glibc 2.34 (libpthread before)
EO_OLD_VERSION(pthread_condattr_setpshared, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_create, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_detach, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_getspecific, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_join, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_key_create, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_key_delete, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_kill, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_mutex_trylock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_mutexattr_destroy, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_mutexattr_init, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_mutexattr_setpshared, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_mutexattr_settype, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_once, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_destroy, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_init, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_rdlock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_timedrdlock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_timedwrlock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_tryrdlock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_trywrlock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_unlock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlock_wrlock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlockattr_destroy, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlockattr_init, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_rwlockattr_setpshared, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_setspecific, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_spin_destroy, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_spin_init, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_spin_lock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_spin_trylock, "GLIBC_2.2.5")
EO_OLD_VERSION(pthread_spin_unlock, "GLIBC_2.2.5")
EO_OLD_VERSION(sem_destroy, "GLIBC_2.2.5")
EO_OLD_VERSION(sem_init, "GLIBC_2.2.5")
EO_OLD_VERSION(sem_post, "GLIBC_2.2.5")
EO_OLD_VERSION(sem_timedwait, "GLIBC_2.2.5")
EO_OLD_VERSION(sem_trywait, "GLIBC_2.2.5")
EO_OLD_VERSION(sem_wait, "GLIBC_2.2.5")
// glibc 2.34 (libdl before)
EO_OLD_VERSION(dlclose, "GLIBC_2.2.5")
EO_OLD_VERSION(dlerror, "GLIBC_2.2.5")
EO_OLD_VERSION(dlmopen, "GLIBC_2.3.4")
EO_OLD_VERSION(dlopen, "GLIBC_2.2.5")
EO_OLD_VERSION(dlsym, "GLIBC_2.2.5")
EO_OLD_VERSION(dlvsym, "GLIBC_2.2.5")
// glibc 2.34 (librt before)
EO_OLD_VERSION(shm_open, "GLIBC_2.2.5")
EO_OLD_VERSION(shm_unlink, "GLIBC_2.2.5")
// glibc 2.29 (libm): new versions without the SVID error-handling wrapper that the older ones
// keep (it acts on overflow and underflow only, setting errno; the values come from the same code)
EO_OLD_VERSION(exp, "GLIBC_2.2.5")
EO_OLD_VERSION(log, "GLIBC_2.2.5")
// GLIBCXX_3.4.30 (gcc 12): condition_variable::wait got a new default version, same function
EO_OLD_VERSION(_ZNSt18condition_variable4waitERSt11unique_lockISt5mutexE, "GLIBCXX_3.4.11")

extern "C" {

// glibc 2.32 added this flag, which gcc 11+'s headers read to skip atomic reference counting in a
// process without threads. A hidden copy of our own that is always 0 ("threads may exist"): the
// atomic path, always right.
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;

// GLIBCXX_3.4.29 (gcc 11): what `new T[n]` calls when n is too large.
__attribute__((visibility("hidden"), noreturn)) void __wrap__ZSt28__throw_bad_array_new_lengthv() {
  throw std::bad_array_new_length();
}

// CXXABI_1.3.13 (gcc 11) exported exception_ptr's reference counting, which its copy constructor
// and destructor, now inline, call (pybind11's exception translation copies exception_ptrs). gcc
// 8's library exports that copy constructor and destructor themselves (CXXABI_1.3.3, still
// exported): an exception_ptr is one pointer, and a copy that is never destroyed is one more
// reference; destroying a copy is one fewer (the object freed with the last one).
void eo_exception_ptr_copy(void** to, void* const* from) __asm__("_ZNSt15__exception_ptr13exception_ptrC1ERKS0_");
void eo_exception_ptr_destroy(void** self) __asm__("_ZNSt15__exception_ptr13exception_ptrD1Ev");

__attribute__((visibility("hidden"))) void __wrap__ZNSt15__exception_ptr13exception_ptr9_M_addrefEv(void** self) {
  void* copy;
  eo_exception_ptr_copy(&copy, self);
}

__attribute__((visibility("hidden"))) void __wrap__ZNSt15__exception_ptr13exception_ptr10_M_releaseEv(void** self) {
  void* copy = *self;
  if (copy != nullptr) {
    eo_exception_ptr_destroy(&copy);
    *self = nullptr;  // as the library's own _M_release leaves it
  }
}

}  // extern "C"
#endif
