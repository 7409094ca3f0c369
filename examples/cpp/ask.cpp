// ask.cpp: embed a dgpo search agent in a C++ program through the header-only wrapper.
//
//   c++ -std=c++17 ask.cpp $(pkg-config --cflags --libs dgpo) -o ask_cpp
//   ./ask_cpp config.json "who wrote the iliad?"
//
// Same output as examples/c/ask.c: "version", "hits", one "step" line per agent step (from the
// progress callback) and "trace", each followed by one line of JSON. Errors print
// "error <status name>: <message>" to stderr and exit with 1.
#include <fstream>
#include <iostream>
#include <sstream>

#include "dgpo.hpp"

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: " << argv[0] << " CONFIG.json QUESTION\n";
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    if (!in) {
        std::cerr << "error: cannot read " << argv[1] << "\n";
        return 1;
    }
    std::stringstream config;
    config << in.rdbuf();
    std::cout << "version " << dgpo::version() << "\n";
    try {
        dgpo::Agent agent = dgpo::Agent::open(config.str());
        std::cout << "hits " << agent.search(argv[2], 2) << "\n";
        std::string trace = agent.ask(argv[2], [](const std::string& step) {
            std::cout << "step " << step << std::endl;
            return true;  // keep going
        });
        std::cout << "trace " << trace << "\n";
    } catch (const dgpo::Error& e) {
        std::cerr << "error " << dgpo_status_name(e.status()) << ": " << e.what() << "\n";
        return 1;
    }
    return 0;
}
