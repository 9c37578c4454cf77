// Exercises every kind of symbol csrc/glibc_compat.cpp stands in for, linked as the modules are
// (tests/test_glibc_compat.py): prints "ok" or the first thing that failed, and exits nonzero.
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>

#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>

static int destroyed = 0;
struct Counted : std::runtime_error {
  Counted() : std::runtime_error("counted") {}
  ~Counted() override { ++destroyed; }
};

static int fail(const char* what) {
  std::printf("%s\n", what);
  return 1;
}

static void* add_one(void* arg) {
  ++*static_cast<int*>(arg);
  return nullptr;
}

int main(int argc, char**) {
  // exception_ptr's reference count (the rebuilt _M_addref / _M_release): the exception lives as
  // long as one copy does, and is destroyed exactly once.
  {
    std::exception_ptr first;
    try { throw Counted(); } catch (...) { first = std::current_exception(); }
    int before = destroyed;  // the thrown temporary's copy may be gone already
    {
      std::exception_ptr second = first, third = second;
      first = nullptr;
      second = nullptr;
      if (destroyed != before) return fail("exception_ptr: freed while a copy is alive");
      try { std::rethrow_exception(third); } catch (const Counted& e) {
        if (std::string(e.what()) != "counted") return fail("exception_ptr: wrong exception");
      }
    }
    if (destroyed != before + 1) return fail("exception_ptr: not freed exactly once");
  }
  // `new T[n]` past the size limit calls __throw_bad_array_new_length.
  try {
    volatile std::size_t n = static_cast<std::size_t>(-1) / 2 + argc;
    int* p = new int[n];
    delete[] p;
    return fail("new[]: no exception");
  } catch (const std::bad_array_new_length&) {
  }
  // pthread (old versions), std::thread, condition_variable::wait (its older version).
  int counter = 0;
  pthread_t t;
  if (pthread_create(&t, nullptr, add_one, &counter) || pthread_join(t, nullptr) || counter != 1)
    return fail("pthread_create / pthread_join");
  std::mutex m;
  std::condition_variable cv;
  bool ready = false;
  std::thread worker([&] { std::lock_guard<std::mutex> lock(m); ready = true; cv.notify_one(); });
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return ready; });
  }
  worker.join();
  sem_t sem;
  if (sem_init(&sem, 0, 1) || sem_trywait(&sem) || sem_destroy(&sem)) return fail("sem_*");
  // dl* and libm's exp / log (old versions).
  void* libm = dlopen("libm.so.6", RTLD_NOW);
  if (!libm || !dlsym(libm, "cos") || dlclose(libm)) return fail("dlopen / dlsym / dlclose");
  volatile double one = 1.0;
  if (std::exp(one) != 2.718281828459045 || std::log(std::exp(one)) != 1.0) return fail("exp / log");
  std::printf("ok\n");
  return 0;
}
