from hold.main import main

main()
