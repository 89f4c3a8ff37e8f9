// A small driver of SimGrid 3.32's live-migration plugin (VmLiveMigration.cpp), the peer that
// benchmarks/bench_engine.py times miglab's model mode against. It is compiled at run time by the
// benchmark (g++ -O2 ... -lsimgrid) from Debian's libsimgrid-dev; nothing here is part of miglab.
//
//   simgrid_migrate PLATFORM.xml RAM_MiB MIG_SPEED_MiBps INTENSITY_PCT REPS
//
// Migrates one VM (a vCPU running a compute loop, so it dirties memory) from pm0 to pm1 REPS times
// and prints one JSON line: the simulated migration time and the wall seconds per migration.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <simgrid/plugins/live_migration.h>
#include <simgrid/s4u.hpp>
#include <simgrid/s4u/VirtualMachine.hpp>

namespace sg4 = simgrid::s4u;

static int ram_mib, speed_mibps, intensity_pct, reps;

static void guest_load() { sg4::this_actor::execute(1e30); }

static void driver()
{
  sg4::Host* src = sg4::Host::by_name("pm0");
  sg4::Host* dst = sg4::Host::by_name("pm1");
  double sim_s = 0, best_wall = 1e30, total_wall = 0;
  for (int i = 0; i < reps; i++) {
    auto t0 = std::chrono::steady_clock::now();
    sg4::VirtualMachine* vm = sg_vm_create_migratable(src, "vm0", 1, ram_mib, speed_mibps, intensity_pct);
    vm->start();
    sg4::ActorPtr load = sg4::Actor::create("load", vm, guest_load);
    double c0 = sg4::Engine::get_clock();
    sg_vm_migrate(vm, dst);
    sim_s = sg4::Engine::get_clock() - c0;
    load->kill();
    vm->destroy();
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    total_wall += wall;
    if (wall < best_wall)
      best_wall = wall;
  }
  std::printf("{\"simulated_migration_s\": %.9g, \"best_wall_s\": %.9g, \"mean_wall_s\": %.9g, \"reps\": %d}\n", sim_s,
              best_wall, total_wall / reps, reps);
}

int main(int argc, char** argv)
{
  sg4::Engine e(&argc, argv);
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s PLATFORM.xml RAM_MiB MIG_SPEED_MiBps INTENSITY_PCT REPS\n", argv[0]);
    return 2;
  }
  sg_vm_live_migration_plugin_init();
  e.load_platform(argv[1]);
  ram_mib       = std::atoi(argv[2]);
  speed_mibps   = std::atoi(argv[3]);
  intensity_pct = std::atoi(argv[4]);
  reps          = std::atoi(argv[5]);
  sg4::Actor::create("driver", sg4::Host::by_name("pm0"), driver);
  e.run();
  return 0;
}
