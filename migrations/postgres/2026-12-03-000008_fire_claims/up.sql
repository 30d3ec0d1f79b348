CREATE INDEX schedule_fires_status ON schedule_fires (status, claimed_at);
