from fa4doctor.cli import main

main()
